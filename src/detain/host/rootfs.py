"""A container root file system without a registry: a skeleton of mount points, cached.

Machines here (and air-gapped ones) cannot pull images. A container only needs somewhere
to mount the host's /usr, the interpreter's installation, detain's guest dir, the job, the
scratch dir and the channel FIFO, plus the few /etc files the dynamic linker reads. The
skeleton holds exactly those, as empty dirs and files, and is built once per layout (its
name is a digest of everything in it), atomically, then only ever read: every mount point
already exists, so no runtime writes into it and concurrent runs can share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..backends.bwrap import ETC_FILES, GROUP, GUEST_DIR, GUEST_JOB, PASSWD, ROOT_LINKS
from ..guest import LAUNCHER
from ..policy import SCRATCH
from .tools import trusted_cache_dir

LAYOUT = 2
GUEST_CHANNEL = "/detain/channel"
GUEST_JOB_FIFO = "/detain/job-fifo"  # where a container started ahead reads its job
# Mount points engines and runtimes create when missing (podman's /run/.containerenv and
# its /etc files): present up front, so nothing is ever written into the shared skeleton.
ENGINE_FILES = ("etc/hosts", "etc/resolv.conf", "etc/hostname", "run/.containerenv",
                GUEST_CHANNEL.lstrip("/"), GUEST_JOB_FIFO.lstrip("/"))
BASE_DIRS = ("usr", "proc", "dev", "sys", "tmp", "run", "var/tmp", "dev/shm", "detain/job",
             GUEST_DIR.lstrip("/"), SCRATCH.lstrip("/"))
# Only plain files the dynamic linker and libc read; nothing here varies per run.
ETC_COPIED = tuple(name for name in ETC_FILES if name not in ("alternatives", "ssl"))


@dataclass(frozen=True)
class Bind:
    """A host path shown inside the container."""

    source: str
    target: str
    writable: bool = False


def system_binds() -> list[Bind]:
    """/usr, and any top-level lib/bin dir that is a real dir here rather than a /usr link."""
    binds = [Bind("/usr", "/usr")]
    for name in ROOT_LINKS:
        path = f"/{name}"
        if os.path.isdir(path) and not os.path.islink(path):
            binds.append(Bind(path, path))
    return binds


def job_binds(job_dir: Path, scratch: Path, channel: Path,
              channel_mount_writable: bool = False) -> list[Bind]:
    """What every container run shows: all read-only but the scratch dir (the channel is
    a FIFO: writable through a read-only mount, but its mode cannot be changed there)."""
    return [Bind(str(LAUNCHER.parent), GUEST_DIR), Bind(str(job_dir), GUEST_JOB),
            Bind(str(scratch), SCRATCH, writable=True),
            Bind(str(channel), GUEST_CHANNEL, writable=channel_mount_writable)]


def _layout(mount_dirs: tuple[str, ...], mount_files: tuple[str, ...] = ()) -> dict:
    links = {name: os.readlink(f"/{name}") for name in ROOT_LINKS if os.path.islink(f"/{name}")}
    etc = {}
    for name in ETC_COPIED:
        try:
            info = os.stat(f"/etc/{name}")
        except OSError:
            continue
        etc[name] = [info.st_size, info.st_mtime_ns]
    dirs = sorted({*BASE_DIRS, *(d.lstrip("/") for d in mount_dirs)})
    return {"layout": LAYOUT, "links": links, "etc": etc, "dirs": dirs,
            "files": sorted({*ENGINE_FILES, *(f.lstrip("/") for f in mount_files)}),
            "passwd": PASSWD, "group": GROUP}


def private_skeleton(mount_dirs: tuple[str, ...], into: Path,
                     mount_files: tuple[str, ...] = ()) -> Path:
    """A skeleton for one run, built at `into`: for per-run mount points (the policy's
    --mount targets), which must neither be written into nor multiply the cached ones.
    A file bound over a file needs a file as its mount point: gVisor cannot create one
    in the read-only root and fails to start ("cannot read client sync file")."""
    _build(into, _layout(mount_dirs, mount_files))
    os.chmod(into, 0o755)
    return into


def skeleton(mount_dirs: tuple[str, ...] = ()) -> Path:
    """The cached skeleton with mount points for `mount_dirs` (the interpreter's)."""
    layout = _layout(mount_dirs)
    digest = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]
    path = trusted_cache_dir() / f"rootfs-{digest}"
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="rootfs-building-", dir=path.parent))
    try:
        _build(building, layout)
        os.chmod(building, 0o755)
        os.rename(building, path)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
        if not path.is_dir():  # a concurrent run that built the same layout first is fine
            raise
    return path


def _build(root: Path, layout: dict) -> None:
    for name, target in layout["links"].items():
        os.symlink(target, root / name)
    for directory in layout["dirs"]:
        (root / directory).mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    for name in layout["files"]:
        (root / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        (root / name).touch(mode=0o644)
    etc = root / "etc"
    for name in layout["etc"]:
        source = Path("/etc") / name
        if source.is_dir():
            shutil.copytree(source, etc / name, symlinks=True)
        else:
            shutil.copy(source, etc / name, follow_symlinks=not source.is_symlink())
    (etc / "passwd").write_text(layout["passwd"])
    (etc / "group").write_text(layout["group"])
    (etc / "hostname").write_text("detain\n")
    os.symlink("/proc/self/mounts", etc / "mtab")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entry = os.path.join(dirpath, name)
            if not os.path.islink(entry):
                mode = 0o644 if name in filenames else 0o1777 if name == "tmp" else 0o755
                os.chmod(entry, mode)
