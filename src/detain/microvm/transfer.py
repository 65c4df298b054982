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
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import DetainError
from ..host.copyout import MAX_ENTRIES
from ..policy import SCRATCH, CopyOut, Mount

HEADER_READ_CAP = 1 << 20  # no tar header (pax, GNU long name) is read whole above this
TAR_OVERHEAD = 2048  # header and padding bytes per entry, beyond the files' own bytes
SKIP_NOTE = "not a regular file or directory"  # host.copyout's wording, for the same case


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
            tar.add(str(mount.host), arcname=str(index), recursive=True, filter=clean)
    return buffer.getvalue()


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


@dataclass
class Unpacked:
    entries: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


def _member_path(name: str) -> str | None:
    """A tar member's path relative to the scratch dir, or None when it is not a plain
    relative path (absolute, '..', NUL, empty)."""
    if "\0" in name or name.startswith("/"):
        return None
    path = posixpath.normpath(name)
    if path == "." or path.startswith("/") or ".." in path.split("/"):
        return None
    return path


def _requested(path: str, wanted: Sequence[str]) -> bool:
    return any(w == "." or path == w or path.startswith(w + "/") for w in wanted)


def unpack(stream: IO[bytes], dest: Path, requests: Sequence[CopyOut], cap: int) -> Unpacked:
    """Materialise the guest's copy-out tar under `dest` (a fresh, empty, private dir that
    nothing else writes to): directories and regular files only, nothing outside the
    requested paths, at most MAX_ENTRIES entries and `cap` bytes. Symlinks, hard links and
    special files are reported, never created, so no later path can pass through a link."""
    wanted = [os.path.relpath(r.sandbox, SCRATCH) for r in requests]
    done = Unpacked()
    stream.seek(0)
    try:
        with tarfile.open(fileobj=_BoundedReads(stream), mode="r:") as tar:
            for member in tar:
                if done.entries >= MAX_ENTRIES:
                    done.skipped.append(f"too many entries (limit {MAX_ENTRIES})")
                    break
                done.entries += 1
                _unpack_member(tar, member, dest, wanted, cap, done)
    except (tarfile.TarError, EOFError) as exc:
        done.skipped.append(f"the rest of the VM's copy-out stream: unreadable ({exc})")
    return done


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path,
                   wanted: Sequence[str], cap: int, done: Unpacked) -> None:
    path = _member_path(member.name)
    if path is None:
        done.skipped.append(f"{member.name[:200]!r}: not a relative path")
        return
    if not _requested(path, wanted):
        return
    target = dest / path
    if member.islnk():
        done.skipped.append(f"{path}: hard-linked file")
        linked = _member_path(member.linkname)
        if linked is not None and (dest / linked).is_file():  # its first name, already out
            (dest / linked).unlink()
            done.skipped.append(f"{linked}: hard-linked file")
        return
    if not (member.isdir() or member.isreg()):
        done.skipped.append(f"{path}: {SKIP_NOTE}")
        return
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if member.isdir():
            target.mkdir(mode=0o700, exist_ok=True)
            return
        if done.bytes + member.size > cap:
            done.skipped.append(f"{path}: copy-out cap of {cap} bytes reached")
            return
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has data
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            while chunk := source.read(1 << 16):
                out.write(chunk)
        done.bytes += member.size
    except OSError as exc:
        done.skipped.append(f"{path}: {exc.strerror or exc}")
