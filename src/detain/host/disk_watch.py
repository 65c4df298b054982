"""Hold an unprivileged run's scratch dir to its disk cap, from the host.

As root the scratch dir is a size-capped tmpfs, and the kernel holds the cap over all its
files. An ordinary user can mount no file system the host still reads after the run (the
copy-out), and RLIMIT_FSIZE caps each file, not their sum: 12 files of 8 MiB pass an 8 MiB
cap. So while the job runs, a host thread measures the blocks allocated under scratch and
ends the job as soon as they pass the cap, and once more after it ended.

The tree is the job's, so the walk is iterative and bounded, and never follows a link the
job made: every directory is opened beneath the scratch dir's own fd with openat2
(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS). A tree the host cannot measure (more entries than
it walks, paths longer than the kernel resolves, a directory it cannot read) could hide
data, so it ends the job just as a full disk does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ENTRY_CAP = 200_000
PATH_CAP = 4000  # below PATH_MAX, so a path the walk builds always resolves
PAUSE_MIN, PAUSE_MAX = 0.01, 0.25
DESCRIPTION = f"measured by the host every {PAUSE_MIN:g}-{PAUSE_MAX:g} s, the job ended " \
              "when over (a fast writer gets past it first)"

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x02, 0x04, 0x08
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_beneath(root_fd: int, relative: str) -> int:
    """A directory under `root_fd`, reached through no symlink and never leaving it."""
    how = _OpenHow(_OPEN_DIR, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, root_fd, os.fsencode(relative), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err), relative)
        # Kernels before 5.6: the last component is still never a link.
        return os.open(relative, _OPEN_DIR, dir_fd=root_fd)
    return fd


@dataclass
class Usage:
    bytes: int = 0
    entries: int = 0
    unmeasurable: str | None = None  # why the walk could not see everything


def measure(root_fd: int, entry_cap: int = ENTRY_CAP) -> Usage:
    """Blocks allocated to every entry under `root_fd`; entries the job removes meanwhile
    are skipped, anything the walk cannot see is reported as unmeasurable."""
    usage = Usage()
    pending = ["."]
    while pending:
        relative = pending.pop()
        try:
            fd = open_beneath(root_fd, relative)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                continue  # replaced by a link or a file since it was listed: counted there
            usage.unmeasurable = f"a directory the host cannot read ({exc.strerror})"
            return usage
        try:
            with os.scandir(fd) as listing:
                for entry in listing:
                    usage.entries += 1
                    if usage.entries > entry_cap:
                        usage.unmeasurable = f"more than {entry_cap} entries"
                        return usage
                    try:
                        info = entry.stat(follow_symlinks=False)
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    usage.bytes += info.st_blocks * 512
                    if is_dir:
                        child = f"{relative}/{entry.name}"
                        if len(os.fsencode(child)) > PATH_CAP:
                            usage.unmeasurable = f"paths longer than {PATH_CAP} bytes"
                            return usage
                        pending.append(child)
        finally:
            os.close(fd)
    return usage


class DiskWatch:
    """A thread that calls `stop_job` once the tree under `root` passes `cap` bytes."""

    def __init__(self, root: Path, cap: int, stop_job: Callable[[], None]) -> None:
        self.cap = cap
        self.peak = 0
        self.reason: str | None = None
        self._stop_job = stop_job
        self._done = threading.Event()
        self._root_fd = os.open(root, _OPEN_DIR)
        self._thread = threading.Thread(target=self._watch, name="detain-disk-watch",
                                        daemon=True)
        self._thread.start()

    def _check(self, running: bool = True) -> bool:
        """Measure once; True (and the reason kept) when the job is over its cap. A tree
        left unmeasurable by a job that has ended hides nothing more: it is removed."""
        usage = measure(self._root_fd)
        self.peak = max(self.peak, usage.bytes)
        if usage.unmeasurable and running:
            self.reason = f"scratch holds {usage.unmeasurable}, more than the host measures"
        elif usage.bytes > self.cap:
            self.reason = "scratch passed the cap"
        return self.reason is not None

    def _watch(self) -> None:
        pause = PAUSE_MIN
        while not self._done.wait(pause):
            started = time.monotonic()
            if self._check():
                self._stop_job()
                return
            pause = min(PAUSE_MAX, max(PAUSE_MIN, 2 * (time.monotonic() - started)))

    def finish(self) -> str | None:
        """Stop watching, measure what the job left, and say why it passed its cap (or
        None when it never did)."""
        self._done.set()
        self._thread.join()
        try:
            over = self.reason
            self.reason = None
            self._check(running=False)  # what the job left: a pass after the last look
            self.reason = over or self.reason
        finally:
            os.close(self._root_fd)
        return self.reason
