"""What host tools answer about themselves, kept on disk so a cold run need not ask again.

Backends probe on every `detain run` (`auto` probes several), and spawning `bwrap
--version` or `runsc flags` costs more than the rest of a probe: `runsc flags` alone is
about a third of a cold gVisor run's own start-up. Such an answer cannot change while the
binary does not, so it is kept under a key naming everything it depends on: the question,
the binary's path and identity (device, inode, size, mtime, ctime), the kernel release and
the effective uid. Replacing or touching the binary, a new kernel or another user makes a
new key; nothing else is ever looked up.

A probe decides which protections a run gets, so the file is trusted only when nobody
else could have written it: it is read through the cache dir's own fd, opened without
following links, and both must be the euid's own and writable by no one else (0700 and
0600 as created here). An untrusted or unreadable cache is ignored and left alone: the
tool is asked afresh, as without a cache. Writes replace the file atomically.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

FILE = "probes.json"
READ_CAP = 1 << 20  # bytes of the file read; a larger one is ignored
ANSWER_CAP = 24 << 10  # characters of one answer kept (`runsc flags`: about 12 KiB)
ENTRIES_CAP = 32  # answers kept, newest last: all of them stay below READ_CAP


def cached_answer(binary: str, question: str, ask: Callable[[], str | None],
                  directory: str) -> str | None:
    """`ask()`'s answer about `binary`, from the cache in `directory` when the same binary
    was asked the same question under this kernel and euid; None answers are not kept."""
    key = _key(binary, question)
    if key is None:  # no such binary: nothing to key on, and nothing to ask
        return None
    known = _load(directory)
    value = known.get(key) if known is not None else None
    if isinstance(value, str):
        return value
    answer = ask()
    if answer is not None and len(answer) <= ANSWER_CAP and known is not None:
        known.pop(key, None)
        known[key] = answer
        _store(directory, dict(list(known.items())[-ENTRIES_CAP:]))
    return answer


def _key(binary: str, question: str) -> str | None:
    try:
        info = os.stat(binary)
    except OSError:
        return None
    return json.dumps([question, binary, info.st_dev, info.st_ino, info.st_size,
                       info.st_mtime_ns, info.st_ctime_ns, os.uname().release, os.geteuid()])


def _trusted(info: os.stat_result, kind: int) -> bool:
    return (stat.S_IFMT(info.st_mode) == kind and info.st_uid == os.geteuid()
            and not info.st_mode & 0o022)


def _open_dir(directory: str, create: bool) -> int | None:
    """The cache dir's fd when it is the euid's own and writable by no one else."""
    if create:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError:
            return None
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if _trusted(os.fstat(fd), stat.S_IFDIR):
        return fd
    os.close(fd)
    return None


def _load(directory: str) -> dict[str, object] | None:
    """The cached answers ({} when there are none yet), or None when the cache cannot be
    trusted (then nothing is written to it either)."""
    dir_fd = _open_dir(directory, create=False)
    if dir_fd is None:
        return {} if not os.path.lexists(directory) else None
    try:
        fd = os.open(FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return {}
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        if not _trusted(os.fstat(fd), stat.S_IFREG):
            return None
        data = os.read(fd, READ_CAP + 1)
    finally:
        os.close(fd)
    try:
        known = json.loads(data) if len(data) <= READ_CAP else {}
    except ValueError:
        known = {}
    return known if isinstance(known, dict) else {}


def _store(directory: str, known: dict[str, object]) -> None:
    dir_fd = _open_dir(directory, create=True)
    if dir_fd is None:
        return
    tmp = f".{FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            view = memoryview(json.dumps(known).encode())
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
    finally:
        os.close(dir_fd)
