"""Files across the VM boundary: read-only mounts in, copy-out results back, both as tar.

A VM shares no directory with the host, so `--mount` contents travel into the guest as a tar
inside the job message (the guest init unpacks it into a tmpfs and binds it read-only at the
sandbox path), and `--copy-out` paths come back as a tar the guest init writes to its own
port after the job has ended. That tar was produced by a machine that ran hostile code, so
`unpack` materialises only directories and regular files, into a fresh private directory no
link can ever exist in, with checked names and the total capped; the host's own
`host.copyout.copy_out` then copies from there exactly as it does from a local scratch dir
(O_NOFOLLOW, modes stripped, hard links skipped, cap). Nothing is copied twice by two rules.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from ..errors import DetainError
from ..host import tree
from ..host.copyout import MAX_ENTRIES, SKIP_NOTE, CopyReport
from ..policy import SCRATCH, CopyOut, Mount

HEADER_READ_CAP = 1 << 20  # no tar header (pax, GNU long name) is read whole above this
TAR_OVERHEAD = 2048  # header and padding bytes per entry, beyond the files' own bytes


def copy_out_cap(disk_bytes: int) -> int:
    """Bytes the guest may send back: the files (at most the disk cap) plus tar framing."""
    return disk_bytes + (MAX_ENTRIES + 16) * TAR_OVERHEAD


def pack_mounts(mounts: Sequence[Mount], cap: int) -> bytes:
    """The mounts' host trees as one tar, entry `N` for mount N. Symlinks stay symlinks
    (resolved inside the guest, as a bind mount's would be), special files are left out,
    owners become root and setuid/setgid/sticky bits go; more than `cap` bytes is an error."""
    total = 0

    def clean(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal total
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            return None
        total += member.size if member.isreg() else 0
        if total > cap:
            raise DetainError(f"--mount: more than {cap} bytes to show; the micro-VM copies "
                              "mounted files into guest memory, capped by the disk limit "
                              "(--disk)")
        member.uid = member.gid = 0
        member.uname = member.gname = "root"
        member.mode &= 0o777
        return member

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index, mount in enumerate(mounts):
            _pack_tree(tar, mount.host, str(index), clean)
    return buffer.getvalue()


def _pack_tree(tar: tarfile.TarFile, root: Path, arcname: str,
               clean: Callable[[tarfile.TarInfo], tarfile.TarInfo | None]) -> None:
    """`root` and what is under it, walked by host/tree.py (tarfile's own add recurses,
    and a mounted dir may hold a tree a job made through an earlier :rw mount); each
    entry is named through /proc/self/fd, a short path at any depth, never followed."""
    tar.add(str(root), arcname=arcname, recursive=False, filter=clean)
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        return
    top = os.open(root, tree.O_DIR)
    walk = tree.walk(top, failed=lambda parts, exc: _unreadable(root, parts, exc))
    try:
        for entry in walk:
            if entry.too_deep:
                raise DetainError(f"--mount: {root} is more than {tree.MAX_DEPTH} levels "
                                  "deep; the micro-VM copies what it shows, up to that depth")
            tar.add(f"/proc/self/fd/{entry.dir_fd}/{entry.name}",
                    arcname="/".join((arcname, *entry.parts)), recursive=False, filter=clean)
            entry.descend = True if entry.is_dir else None
    finally:
        walk.close()
        os.close(top)


def _unreadable(root: Path, parts: tuple[str, ...], exc: OSError) -> None:
    raise DetainError(f"--mount: cannot read {root}/{tree.shown(parts)} ({exc.strerror}); "
                      "the micro-VM copies what it shows, so all of it must be readable")


class Spool:
    """A sink for a side channel: bytes go to an unnamed file, at most `cap` of them."""

    def __init__(self, directory: Path, cap: int) -> None:
        self.file = open(os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600),
                         "w+b")
        self.cap = cap
        self.total = 0

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def feed(self, chunk: bytes) -> None:
        room = self.cap - self.total
        self.total += len(chunk)
        if room > 0:
            self.file.write(chunk[:room])

    def close(self) -> None:
        self.file.close()


class _BoundedReads(io.RawIOBase):
    """The spooled stream for tarfile, refusing any single read above HEADER_READ_CAP: file
    data is read in small blocks, so only a hostile giant header would ask for more."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > HEADER_READ_CAP:
            raise tarfile.ReadError("a tar header in the copy-out stream is too large")
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _member_path(name: str) -> str | None:
    """A tar member's path relative to the scratch dir, or None when it is not a plain
    relative path (absolute, '..', NUL, empty)."""
    if "\0" in name or name.startswith("/"):
        return None
    path = posixpath.normpath(name)
    if path == "." or path.startswith("/") or ".." in path.split("/"):
        return None
    return path


def _depth_allowed(path: str, wanted: Sequence[str]) -> int | None:
    """How many components `path` may have (MAX_DEPTH levels below the request that holds
    it, as the host's own copy-out walks), or None when no request holds it."""
    for want in wanted:
        if want == ".":
            return tree.MAX_DEPTH
        if path == want or path.startswith(want + "/"):
            return len(want.split("/")) + tree.MAX_DEPTH
    return None


def unpack(stream: IO[bytes], dest: Path, requests: Sequence[CopyOut], cap: int) -> CopyReport:
    """Materialise the guest's copy-out tar under `dest` (a fresh, empty, private dir that
    nothing else writes to): directories and regular files only, nothing outside the
    requested paths, at most MAX_ENTRIES entries, MAX_DEPTH levels and `cap` bytes.
    Symlinks, hard links and special files are reported, never created, so no later path
    can pass through a link. What could not arrive makes the report's `error`."""
    wanted = [os.path.relpath(r.sandbox, SCRATCH) for r in requests]
    done = CopyReport()
    stream.seek(0)
    top = os.open(dest, tree.O_DIR)
    try:
        with tarfile.open(fileobj=_BoundedReads(stream), mode="r:") as tar:
            for member in tar:
                if done.entries >= MAX_ENTRIES:
                    done.skip("the rest", f"too many entries (limit {MAX_ENTRIES})")
                    break
                done.entries += 1
                _unpack_member(tar, member, top, wanted, cap, done)
    except (tarfile.TarError, EOFError) as exc:
        done.skip("the rest of the VM's copy-out stream", f"unreadable ({exc})")
    finally:
        os.close(top)
    return done


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, top: int,
                   wanted: Sequence[str], cap: int, done: CopyReport) -> None:
    path = _member_path(member.name)
    if path is None:
        done.skip(tree.shown([member.name]), "not a relative path")
        return
    allowed = _depth_allowed(path, wanted)
    if allowed is None:
        return
    parts = path.split("/")
    shown = tree.shown(parts)
    if len(parts) > allowed:
        done.skip(shown, f"deeper than {tree.MAX_DEPTH} levels")
        return
    try:
        if member.islnk():
            done.skip(shown, "hard-linked file", incomplete=False)
            _unlink_first_name(top, member.linkname, done)
        elif not (member.isdir() or member.isreg()):
            done.skip(shown, SKIP_NOTE, incomplete=False)
        elif member.isdir():
            os.close(tree.make_dirs(top, parts))
        elif done.bytes + member.size > cap:
            done.skip(shown, f"copy-out cap of {cap} bytes reached")
        else:
            _write_member(tar, member, top, parts)
            done.bytes += member.size
    except OSError as exc:
        done.skip(shown, exc.strerror or str(exc))


def _unlink_first_name(top: int, linkname: str, done: CopyReport) -> None:
    """A hard link's first name, already out as a plain file, goes too: both are skipped."""
    linked = _member_path(linkname)
    if linked is None:
        return
    *parents, name = linked.split("/")
    parent = tree.make_dirs(top, parents, create=False)
    try:
        if stat.S_ISREG(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=parent)
            done.skip(tree.shown(linked.split("/")), "hard-linked file", incomplete=False)
    finally:
        os.close(parent)


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, top: int,
                  parts: list[str]) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has data
    parent = tree.make_dirs(top, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600, dir_fd=parent)
    finally:
        os.close(parent)
    with open(fd, "wb") as out:
        while chunk := source.read(1 << 16):
            out.write(chunk)
