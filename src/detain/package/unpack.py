"""Unpack an artifact on the host for the static pre-scan, treating the archive as hostile.

Only regular files and directories come out; names must be relative, without `..`, and
at most host/tree.py's MAX_DEPTH levels deep; links, devices and FIFOs are skipped, and the
number of entries and the total size are capped so a zip bomb stops early. Every level is
created and opened relative to its parent's fd without following links (tree.make_dirs),
never by a recursive makedirs that a 2,000-level name would overflow. Nothing inside is
executed.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import DetainError
from ..host import tree

MAX_ENTRIES = 20000
MAX_BYTES = 512 << 20
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(name: str) -> list[str] | None:
    """The member's path components, or None when it is not a plain relative path."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\0" in name:
        return None
    return [part for part in path.parts if part != "."] or None


class _Writer:
    """Places members under `dest`, counting entries and bytes against the caps."""

    def __init__(self, artifact: Path, dest: Path) -> None:
        self.artifact = artifact
        self.top = os.open(dest, tree.O_DIR)
        self.entries = self.total = 0

    def seen(self) -> None:
        """Count one member, placed or not: the cap bounds the work, not just the output."""
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise DetainError(f"{self.artifact.name}: more than {MAX_ENTRIES} entries")

    def place(self, name: str, is_dir: bool, size: int,
              source: Callable[[], IO[bytes]]) -> None:
        parts = _parts(name)
        if parts is None:
            return
        if len(parts) > tree.MAX_DEPTH:
            raise DetainError(f"{self.artifact.name}: an entry is nested more than "
                              f"{tree.MAX_DEPTH} levels deep")
        if is_dir:
            os.close(tree.make_dirs(self.top, parts))
            return
        self.total += size
        if self.total > MAX_BYTES:
            raise DetainError(f"{self.artifact.name}: unpacks to more than "
                              f"{MAX_BYTES >> 20} MiB")
        parent = tree.make_dirs(self.top, parts[:-1])
        try:
            fd = os.open(parts[-1], O_NEW, 0o600, dir_fd=parent)
        except FileExistsError:
            return  # a second member of the same name: the first one stays
        finally:
            os.close(parent)
        with source() as data, open(fd, "wb") as out:
            shutil.copyfileobj(data, out)

    def close(self) -> None:
        os.close(self.top)


def _unzip(archive: zipfile.ZipFile, writer: _Writer) -> None:
    for info in archive.infolist():
        writer.seen()
        if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink
            continue
        writer.place(info.filename, info.is_dir(), info.file_size,
                     lambda info=info: archive.open(info))


def _untar(archive: tarfile.TarFile, writer: _Writer) -> None:
    for member in archive:
        writer.seen()
        if member.isfile() or member.isdir():
            writer.place(member.name, member.isdir(), member.size,
                         lambda member=member: archive.extractfile(member))


def unpack(artifact: Path, dest: Path) -> Path:
    """The artifact's files under `dest` (a directory is returned as it is)."""
    if artifact.is_dir():
        return artifact
    dest.mkdir(parents=True, exist_ok=True)
    try:
        writer = _Writer(artifact, dest)
        try:
            if artifact.name.endswith((".whl", ".zip")):
                with zipfile.ZipFile(artifact) as archive:
                    _unzip(archive, writer)
            else:
                with tarfile.open(artifact) as archive:
                    _untar(archive, writer)
        finally:
            writer.close()
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise DetainError(f"{artifact.name}: not a readable archive ({exc})") from None
    return dest
