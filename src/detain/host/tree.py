"""Walk and remove directory trees a job made: no recursion, no link followed, bounded.

A job can leave anything in its scratch dir: a chain 10,000 directories deep (Python's
recursion stops near 1,000, and PATH_MAX at 4,096 bytes), directories with millions of
entries, names holding newlines or escape bytes, FIFOs, sockets, symlink loops, hard
links, directories without read, write or search permission. Every host-side pass over
such a tree (removal, copy-out, the static scan) goes through this module, so one set of
rules holds everywhere:

- an explicit stack, never recursion; each directory is opened relative to its parent's
  fd with O_NOFOLLOW, so no symlink is ever followed and no path is ever longer than one
  name;
- directories are read lazily (scandir), so a wide directory costs no memory;
- open fds are bounded: a walk never goes deeper than `MAX_DEPTH` (deeper directories are
  yielded, marked too deep, and not entered), and removal, which must reach every entry,
  moves a subtree found at `REMOVE_WINDOW` levels up to the top instead of descending,
  so any depth is removed with the same few fds in linear time;
- removal never crosses into another mount (a leftover bind mount stays untouched) and
  gives itself the permissions it needs on the way down; what it cannot remove is
  reported, never retried forever and never raised mid-way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 64  # levels a walk enters (2 fds each); agreed with microvm/guest_init.py
REMOVE_WINDOW = 32  # levels removal holds open before it moves a deeper subtree up
SAMPLES = 5  # failures named in a removal error; the rest are counted
OWNER_RWX = stat.S_IRWXU


def shown(parts: tuple[str, ...] | list[str], limit: int = 200) -> str:
    """A job-made relative path as printable text: undecodable bytes, control characters
    and newlines escaped (it goes into notes, errors and terminals), and shortened."""
    raw = "/".join(parts).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = raw.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def open_dir(name: str, dir_fd: int, *, fix_modes: bool = False) -> int:
    """An fd for the directory `name` in `dir_fd`, never through a symlink. With
    `fix_modes`, a directory we may not read is first made ours to read (u+rwx)."""
    try:
        return os.open(name, O_DIR, dir_fd=dir_fd)
    except PermissionError:
        if not fix_modes:
            raise
    handle = os.open(name, O_PATH_DIR, dir_fd=dir_fd)  # needs no permission on the dir
    try:
        os.chmod(f"/proc/self/fd/{handle}", OWNER_RWX)  # the inode itself: no link to follow
    finally:
        os.close(handle)
    return os.open(name, O_DIR, dir_fd=dir_fd)


def make_dirs(top_fd: int, parts: list[str] | tuple[str, ...], *, create: bool = True) -> int:
    """An fd for the directory `parts` under `top_fd`, each level made (0700) if missing
    and `create`, and opened without following a link: the iterative, fd-relative
    os.makedirs."""
    fd = os.dup(top_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            next_fd = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Entry:
    """One entry of a walk. `context` is its parent directory's; a consumer that wants
    the walk to enter a directory sets `descend` to the context its children get."""

    dir_fd: int
    name: str
    parts: tuple[str, ...]
    info: os.stat_result
    context: Any
    too_deep: bool = False
    descend: Any = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.info.st_mode)


@dataclass
class _Frame:
    fd: int
    parts: tuple[str, ...]
    entries: Any  # the os.scandir iterator over fd
    context: Any = None


def walk(top_fd: int, context: Any = None, *, max_depth: int = MAX_DEPTH,
         release: Callable[[Any], None] | None = None,
         failed: Callable[[tuple[str, ...], OSError], None] | None = None) -> Iterator[Entry]:
    """Every entry under the directory `top_fd`, parents before children, in directory
    order, without following links. The walk enters a directory only when the consumer
    set `entry.descend` (the context its children carry); `release` gets each such
    context back when its directory is done. A directory that cannot be read or an entry
    that vanished goes to `failed` and the walk goes on. `top_fd` stays the caller's."""
    stack = [_Frame(top_fd, (), os.scandir(top_fd), context)]
    try:
        while stack:
            frame = stack[-1]
            item = _next(frame, failed)
            if item is None:
                stack.pop().entries.close()
                if stack:
                    os.close(frame.fd)
                    if release is not None:
                        release(frame.context)
                continue
            parts = (*frame.parts, item.name)
            try:
                info = os.stat(item.name, dir_fd=frame.fd, follow_symlinks=False)
            except OSError as exc:
                if failed is not None:
                    failed(parts, exc)
                continue
            entry = Entry(frame.fd, item.name, parts, info, frame.context,
                          too_deep=stat.S_ISDIR(info.st_mode) and len(stack) >= max_depth)
            yield entry
            if entry.descend is None or not entry.is_dir or entry.too_deep:
                continue
            child = _enter(frame.fd, entry, failed)
            if child is None:
                if release is not None:
                    release(entry.descend)
                continue
            stack.append(child)
    finally:
        for frame in stack:
            frame.entries.close()
        for frame in stack[1:]:
            os.close(frame.fd)
            if release is not None:
                release(frame.context)


def _next(frame: _Frame, failed) -> os.DirEntry | None:
    try:
        return next(frame.entries, None)
    except OSError as exc:
        if failed is not None:
            failed(frame.parts, exc)
        return None


def _enter(parent_fd: int, entry: Entry, failed) -> _Frame | None:
    try:
        fd = os.open(entry.name, O_DIR, dir_fd=parent_fd)
    except OSError as exc:
        if failed is not None:
            failed(entry.parts, exc)
        return None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (entry.info.st_dev, entry.info.st_ino):
            raise OSError(errno.ESTALE, "changed while being read")
        return _Frame(fd, entry.parts, os.scandir(fd), entry.descend)
    except OSError as exc:
        os.close(fd)
        if failed is not None:
            failed(entry.parts, exc)
        return None


@dataclass
class _Removal:
    top_fd: int
    top_dev: int
    mounts: set[tuple[int, int]]
    removed: int = 0
    failures: list[str] = field(default_factory=list)
    failed: int = 0
    moved: int = 0

    def fail(self, parts: tuple[str, ...], reason: str) -> None:
        self.failed += 1
        if len(self.failures) < SAMPLES:
            self.failures.append(f"{shown(parts)}: {reason}")


@dataclass
class _RemoveFrame:
    fd: int
    name: str
    parts: tuple[str, ...]
    entries: Any
    progress: int  # removals done when this scan of the directory began


def remove(path: str | os.PathLike) -> None:
    """Remove `path` and everything under it. Everything removable goes; then, if
    anything is left, OSError names a few of the entries and why. `path` itself is the
    caller's (its parent directories are followed as usual), everything under it hostile."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return
        top_fd = open_dir(name, parent_fd, fix_modes=True)
        try:
            state = _Removal(top_fd, os.fstat(top_fd).st_dev, _mount_points(path))
            _clear(state)
        finally:
            os.close(top_fd)
        if state.failed:
            more = state.failed - len(state.failures)
            raise OSError(errno.ENOTEMPTY, f"could not remove {path} entirely: "
                          + "; ".join(state.failures)
                          + (f" (and {more} more)" if more > 0 else ""))
        os.rmdir(name, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def _mount_points(path: str) -> set[tuple[int, int]]:
    """(device, inode) of every mount point under `path`: removal never enters one."""
    found = set()
    try:
        with open("/proc/self/mountinfo", "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    prefix = os.fsencode(os.path.realpath(path).rstrip("/") + "/")  # as mountinfo says it
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point.startswith(prefix):
            try:
                info = os.stat(point, follow_symlinks=False)
            except OSError:
                continue
            found.add((info.st_dev, info.st_ino))
    return found


def _unescape(field_: bytes) -> bytes:
    """mountinfo's octal escapes (\\040 for a space, \\012 for a newline …) undone."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8) & 0xFF]), field_)


def _clear(state: _Removal) -> None:
    """Empty the top directory: an explicit stack at most REMOVE_WINDOW deep; a directory
    met at that depth is moved up to the top and cleared from there later. A directory
    is scanned again only when the last scan removed something (moved-up subtrees, or
    entries readdir skipped while its directory changed), so the loop always ends."""
    _writable(state.top_fd)
    stack = [_RemoveFrame(state.top_fd, "", (), os.scandir(state.top_fd), 0)]
    try:
        while stack:
            frame = stack[-1]
            item = _next_entry(frame, state)
            if item is not None:
                child = _remove_entry(state, frame, item, deep=len(stack) >= REMOVE_WINDOW)
                if child is not None:
                    stack.append(child)
                continue
            frame.entries.close()
            done = state.removed == frame.progress  # this scan removed nothing: stop
            if len(stack) > 1 and _remove_dir(state, stack[-2].fd, frame):
                done = True
            if done:
                stack.pop()
                if stack:
                    os.close(frame.fd)
                continue
            frame.progress = state.removed  # changed meanwhile: look once more
            frame.entries = os.scandir(frame.fd)
    finally:
        for frame in stack:
            frame.entries.close()
        for frame in stack[1:]:
            os.close(frame.fd)


def _next_entry(frame: _RemoveFrame, state: _Removal) -> os.DirEntry | None:
    try:
        return next(frame.entries, None)
    except OSError as exc:
        state.fail(frame.parts, exc.strerror or str(exc))
        return None


def _remove_entry(state: _Removal, frame: _RemoveFrame, item: os.DirEntry,
                  deep: bool) -> _RemoveFrame | None:
    """Unlink a non-directory; for a directory, the frame to clear it (or, at the
    window's depth, move it up to the top and return None)."""
    name, parts = item.name, (*frame.parts, item.name)
    try:
        info = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=frame.fd)
            state.removed += 1
            return None
        if info.st_dev != state.top_dev or (info.st_dev, info.st_ino) in state.mounts:
            state.fail(parts, "a mount point (left in place)")
            return None
        if deep:
            _move_up(state, frame.fd, name)
            return None
        fd = open_dir(name, frame.fd, fix_modes=True)
    except FileNotFoundError:
        return None
    except OSError as exc:
        state.fail(parts, exc.strerror or str(exc))
        return None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) in state.mounts or opened.st_dev != state.top_dev:
            raise OSError(errno.EBUSY, "a mount point (left in place)")
        _writable(fd, opened)
        return _RemoveFrame(fd, name, parts, os.scandir(fd), state.removed)
    except OSError as exc:
        os.close(fd)
        state.fail(parts, exc.strerror or str(exc))
        return None


def _writable(fd: int, info: os.stat_result | None = None) -> None:
    """Give ourselves u+rwx on a directory we are about to empty (a no-op for root, who
    needs none, on any mode that already has them)."""
    info = info or os.fstat(fd)
    if stat.S_IMODE(info.st_mode) & OWNER_RWX != OWNER_RWX and os.geteuid() != 0:
        os.fchmod(fd, stat.S_IMODE(info.st_mode) | OWNER_RWX)


def _move_up(state: _Removal, dir_fd: int, name: str) -> None:
    """Move a deep directory to the top under a fresh name (renaming a directory to
    another parent needs write permission on it, for its '..')."""
    if os.geteuid() != 0:
        fd = open_dir(name, dir_fd, fix_modes=True)
        try:
            _writable(fd)
        finally:
            os.close(fd)
    for _ in range(3):  # a name already taken at the top (never by chance) gets another
        state.moved += 1
        fresh = f".detain-up-{state.moved}-{os.urandom(8).hex()}"
        try:
            os.rename(name, fresh, src_dir_fd=dir_fd, dst_dir_fd=state.top_fd)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise OSError(errno.EEXIST, "no free name at the top to move it to")


def _remove_dir(state: _Removal, parent_fd: int, frame: _RemoveFrame) -> bool:
    """rmdir a cleared directory: False only when it is not empty yet (look again)."""
    try:
        os.rmdir(frame.name, dir_fd=parent_fd)
        state.removed += 1
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            return False
        state.fail(frame.parts, exc.strerror or str(exc))
    return True
