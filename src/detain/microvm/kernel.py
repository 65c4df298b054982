"""The guest kernel: Debian's cloud kernel, fetched with apt and unpacked, never installed.

The cloud flavour is small and has what a virtio-only machine needs (as modules, which the
initramfs loads). QEMU boots the uncompressed ELF `vmlinux` straight through its PVH entry
point, skipping the bzImage decompressor, so the payload is extracted here once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DetainError

META_PACKAGE = "linux-image-cloud-amd64"
# Loaded in this order by the initramfs; every dependency comes before its user.
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "squashfs")
# Compressed-payload magics inside a bzImage, and the tool that unpacks each.
DECOMPRESSORS = ((b"\x02\x21\x4c\x18", ["lz4", "-dc"]), (b"\xfd7zXZ\x00", ["xz", "-dc"]),
                 (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]), (b"\x1f\x8b\x08", ["gzip", "-dc"]))


@dataclass(frozen=True)
class Kernel:
    """An unpacked guest kernel: `vmlinux`, its initramfs modules, and its version."""

    path: Path
    version: str

    @property
    def vmlinux(self) -> Path:
        return self.path / "vmlinux"

    def module(self, name: str) -> Path:
        return self.path / "modules" / f"{name}.ko"

    @classmethod
    def load(cls, path: Path) -> Kernel | None:
        try:
            info = json.loads((path / "kernel.json").read_text())
        except (OSError, ValueError):
            return None
        kernel = cls(path, str(info.get("version", "")))
        complete = kernel.vmlinux.is_file() and all(kernel.module(m).is_file() for m in MODULES)
        return kernel if complete and kernel.version else None


def _apt(args: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DetainError(f"{args[0]} failed ({exc}); detain setup microvm needs apt") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DetainError(f"`{' '.join(args)}` failed: {tail[0]}; run `apt-get update` first "
                          "or check the network")
    return done.stdout


def newest_package() -> str:
    """The versioned kernel package the cloud meta-package currently points at."""
    out = _apt(["apt-cache", "depends", "--no-recommends", "--no-suggests", META_PACKAGE],
               Path("/"))
    for line in out.splitlines():
        name = line.split(":", 1)[-1].strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise DetainError(f"apt knows no {META_PACKAGE}; run `apt-get update` (Debian/Ubuntu)")


def extract_vmlinux(bzimage: Path, target: Path) -> None:
    """Find the compressed payload in a bzImage and unpack it to an ELF vmlinux."""
    data = bzimage.read_bytes()
    for magic, tool in DECOMPRESSORS:
        offset = data.find(magic, 0x200)
        if offset < 0 or shutil.which(tool[0]) is None:
            continue
        with open(target, "wb") as out:
            # Trailing bytes after the stream make the tools complain; the output is whole.
            subprocess.run(tool, input=data[offset:], stdout=out, stderr=subprocess.DEVNULL,
                           check=False)
        with open(target, "rb") as check:
            if check.read(4) == b"\x7fELF":
                return
    raise DetainError(f"could not unpack {bzimage.name}: install lz4 (apt install lz4)")


def fetch(cache: Path, package: str) -> Kernel:
    """Download `package`, unpack vmlinux and the needed modules into the cache."""
    target = cache / package
    existing = Kernel.load(target)
    if existing is not None:
        return existing
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's download user must be able to write here
        _apt(["apt-get", "download", package], work)
        deb = next(work.glob("*.deb"), None)
        if deb is None:
            raise DetainError(f"apt-get download {package} produced no .deb")
        _apt(["dpkg-deb", "-x", str(deb), str(work / "root")], work)
        bzimage = next((work / "root" / "boot").glob("vmlinuz-*"), None)
        if bzimage is None:
            raise DetainError(f"{package} holds no /boot/vmlinuz-*")
        version = bzimage.name.removeprefix("vmlinuz-")
        staging = work / "kernel"
        (staging / "modules").mkdir(parents=True)
        extract_vmlinux(bzimage, staging / "vmlinux")
        tree = work / "root" / "lib" / "modules" / version
        for name in MODULES:
            found = next(tree.rglob(f"{name}.ko"), None)
            if found is None:
                raise DetainError(f"{package} lacks the {name} module")
            shutil.copyfile(found, staging / "modules" / f"{name}.ko")
        (staging / "kernel.json").write_text(json.dumps({"version": version,
                                                         "package": package}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    kernel = Kernel.load(target)
    if kernel is None:
        raise DetainError(f"unpacking {package} left an incomplete kernel in {target}")
    return kernel
