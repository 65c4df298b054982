"""Unpack an artifact on the host for the static pre-scan, treating the archive as hostile.

Only regular files and directories come out; names must be relative, without `..`;
links, devices and FIFOs are skipped (tarfile's `data` filter), and the number of entries
and the total size are capped so a zip bomb stops early. Nothing inside is executed.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import DetainError

MAX_ENTRIES = 20000
MAX_BYTES = 512 << 20


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\0" not in name


def _unzip(artifact: Path, dest: Path) -> None:
    total = 0
    with zipfile.ZipFile(artifact) as archive:
        members = archive.infolist()
        if len(members) > MAX_ENTRIES:
            raise DetainError(f"{artifact.name}: more than {MAX_ENTRIES} entries")
        for info in members:
            if not _safe_name(info.filename) or (info.external_attr >> 16) & 0o170000 == 0o120000:
                continue
            total += info.file_size
            if total > MAX_BYTES:
                raise DetainError(f"{artifact.name}: unpacks to more than {MAX_BYTES >> 20} MiB")
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)


def _untar(artifact: Path, dest: Path) -> None:
    with tarfile.open(artifact) as archive:
        members, total = [], 0
        for member in archive:
            if len(members) >= MAX_ENTRIES:
                raise DetainError(f"{artifact.name}: more than {MAX_ENTRIES} entries")
            if not (member.isfile() or member.isdir()) or not _safe_name(member.name):
                continue
            total += member.size
            if total > MAX_BYTES:
                raise DetainError(f"{artifact.name}: unpacks to more than {MAX_BYTES >> 20} MiB")
            members.append(member)
        archive.extractall(dest, members=members, filter="data")


def unpack(artifact: Path, dest: Path) -> Path:
    """The artifact's files under `dest` (a directory is returned as it is)."""
    if artifact.is_dir():
        return artifact
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if artifact.name.endswith((".whl", ".zip")):
            _unzip(artifact, dest)
        else:
            _untar(artifact, dest)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise DetainError(f"{artifact.name}: not a readable archive ({exc})") from None
    return dest
