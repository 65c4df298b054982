"""The guest's two images: a tiny initramfs and a read-only squashfs root.

The initramfs holds only static busybox, the kernel modules for virtio and squashfs, and a
script that builds the root and hands over to detain's Python init. The root is a tmpfs
holding read-only binds of the squashfs's top-level dirs, so the init can make mount points
for --mount anywhere outside them before it makes the root read-only for the job. The
image is a squashfs on virtio-blk with the host's interpreter and its whole stdlib at
their host paths (so `sys.executable` and the assurance's interpreter path mean the same
inside and out), the shared libraries `ldd` lists for it and its extension modules, and
detain's guest code.
Keeping the stdlib on a disk rather than in the initramfs keeps the saved VM state small:
only the pages the guest actually read are in it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DetainError
from ..guest import LAUNCHER
from ..host.interpreter import Interpreter
from ..policy import PROFILES, SCRATCH
from .kernel import MODULES, Kernel

FORMAT = 7  # bump when the layout below, machine.py's devices, CPU or the kernel
# command line change (a saved VM only restores into the machine that saved it)
GUEST_INIT = Path(__file__).with_name("guest_init.py")
# The outside tracer (host/tracer_main.py, stdlib only), run by the guest init for --trace.
TRACER = Path(__file__).parents[1] / "host" / "tracer_main.py"
GUEST_TRACER = "/detain/tracer_main.py"
GUEST_LAUNCHER = "/detain/guest/launcher.py"
GUEST_JOB = "/detain/job"
BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")
# Not the stdlib proper: the test suite (most of the size) and third-party packages.
SKIP_TOP = ("test",)
THIRD_PARTY = ("site-packages", "dist-packages")
PASSWD = ("root:x:0:0:root:/root:/sbin/nologin\n"
          f"sandbox:x:1000:1000:detain sandbox:{SCRATCH}:/sbin/nologin\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
GROUP = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"
INIT_SCRIPT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t devtmpfs dev /dev
for m in {modules}; do $B insmod /lib/modules/$m.ko || $B echo "detain: insmod $m failed"; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 500 ]; do $B sleep 0.01; n=$((n+1)); done
$B mkdir /lower
$B mount -t squashfs -o ro /dev/vda /lower || $B echo "detain: cannot mount the guest image"
$B mount -t tmpfs -o mode=0755,nosuid,nodev root /root
for name in $($B ls -A /lower); do
  if [ -d /lower/$name ] && [ ! -L /lower/$name ]; then
    $B mkdir /root/$name && $B mount -o bind /lower/$name /root/$name
  else
    $B cp -a /lower/$name /root/$name
  fi
done
$B mount --move /dev /root/dev
exec $B switch_root /root {python} -I -S /detain/init.py
"""
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    path: Path
    digest: str

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.squashfs"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.cpio"

    def ready(self) -> bool:
        return self.rootfs.is_file() and self.initrd.is_file() and \
            (self.path / "image.json").is_file()


def describe(img: Image) -> dict:
    """What an image was built from (its image.json), or {} when unreadable."""
    try:
        data = json.loads((img.path / "image.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def digest(kernel: Kernel, interp: Interpreter) -> str:
    """Changes whenever the kernel, the interpreter or any guest-side detain code changes."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, kernel.version, interp.executable, interp.prefixes,
                         interp.version, INIT_SCRIPT, PASSWD, GROUP]).encode())
    for path in (*_guest_code(), GUEST_INIT, TRACER):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _guest_code() -> list[Path]:
    """The launcher and the sibling modules it loads, all shipped beside it."""
    return sorted(LAUNCHER.parent.glob("*.py"))


def locate(cache: Path, kernel: Kernel, interp: Interpreter) -> Image:
    value = digest(kernel, interp)
    return Image(cache / f"image-{value}", value)


def _busybox() -> str:
    for path in BUSYBOX:
        if os.path.isfile(path):
            return path
    raise DetainError("static busybox is missing: apt install busybox-static")


def _ldd(binaries: list[str]) -> set[str]:
    """Shared libraries (host paths) the binaries load, including the dynamic loader."""
    libs: set[str] = set()
    for start in range(0, len(binaries), 64):
        done = subprocess.run(["ldd", *binaries[start:start + 64]], capture_output=True,
                              text=True, env={"LC_ALL": "C"}, check=False)
        for match in re.finditer(r"(?:=>\s*)?(/\S+)\s+\(0x", done.stdout):
            libs.add(match.group(1))
    return libs


def _copy(source: str, root: Path) -> None:
    """Copy a host file to the same path under `root`, keeping a symlink chain's names."""
    path = source
    for _ in range(10):
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(path):
            link = os.readlink(path)
            if not dest.exists() and not dest.is_symlink():
                dest.symlink_to(link)
            path = os.path.normpath(os.path.join(os.path.dirname(path), link))
            continue
        if not dest.exists():
            shutil.copy2(path, dest)
        return


def _stage_python(interp: Interpreter, root: Path) -> list[str]:
    """The interpreter, its stdlib and libraries; returns the binaries needing libraries."""
    binaries = [interp.executable]
    _copy(interp.executable, root)
    major_minor = ".".join(interp.version.split(".")[:2])
    for prefix in interp.prefixes:
        stdlib = Path(prefix) / "lib" / f"python{major_minor}"
        if not stdlib.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(stdlib):
            skip = THIRD_PARTY + (SKIP_TOP if Path(dirpath) == stdlib else ())
            dirnames[:] = [d for d in dirnames if d not in skip]
            for name in filenames:
                full = os.path.join(dirpath, name)
                _copy(full, root)
                if name.endswith(".so"):
                    binaries.append(full)
    for lib in _ldd(binaries):
        _copy(lib, root)
    return binaries


def _stage_detain(interp: Interpreter, root: Path) -> None:
    guest = root / "detain" / "guest"
    guest.mkdir(parents=True)
    for path in _guest_code():
        shutil.copyfile(path, guest / path.name)
    # Byte-compiled by the guest's own interpreter: the read-only image cannot cache them,
    # and compiling the launcher's helpers on every run is slow under an emulated CPU.
    done = subprocess.run([interp.executable, "-I", "-m", "compileall", "-q", str(guest)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DetainError(f"could not byte-compile the guest code: {done.stdout[-300:]}")
    shutil.copyfile(GUEST_INIT, root / "detain" / "init.py")
    shutil.copyfile(TRACER, root / GUEST_TRACER.lstrip("/"))  # started before the save
    warmup = [interp.executable, *PROFILES["strict"], GUEST_LAUNCHER, "3", "CORE=0", "code",
              "pass"]
    (root / "detain" / "warmup.json").write_text(json.dumps({"argv": warmup, "fd": 3}))
    (root / "detain" / "job").mkdir()
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    for name, text in (("passwd", PASSWD), ("group", GROUP), ("hostname", "detain\n")):
        (etc / name).write_text(text)
    for name in ("proc", "sys", "dev", "tmp", "scratch", "root"):
        (root / name).mkdir(exist_ok=True)


def _normalise_modes(root: Path) -> None:
    """World-readable files, no setuid; /root traversable (the interpreter may live there)
    but not listable, so the job cannot tell what else the host keeps in it."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                mode = os.stat(full).st_mode
                os.chmod(full, 0o755 if mode & stat.S_IXUSR else 0o644)
    os.chmod(root / "root", 0o711)
    os.chmod(root / "tmp", 0o1777)


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (the initramfs format) of (name, mode, data) entries."""
    out = io.BytesIO()
    for number, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (number, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data + b"\0" * (-len(data) % 4))
    return out.getvalue()


def _initrd(kernel: Kernel, interp: Interpreter) -> bytes:
    directory, executable = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    script = INIT_SCRIPT.format(modules=" ".join(MODULES), python=interp.executable)
    entries = [(d, directory, b"") for d in ("bin", "dev", "lib", "lib/modules", "root")]
    entries.append(("bin/busybox", executable, Path(_busybox()).read_bytes()))
    entries += [(f"lib/modules/{m}.ko", stat.S_IFREG | 0o644, kernel.module(m).read_bytes())
                for m in MODULES]
    entries.append(("init", executable, script.encode()))
    return _cpio(entries)


def build(image: Image, kernel: Kernel, interp: Interpreter,
          progress: Progress | None = None) -> Image:
    """Build both images into `image.path` (atomically: a half-built image never shows)."""
    if image.ready():
        return image
    if shutil.which("mksquashfs") is None:
        raise DetainError("mksquashfs is missing: apt install squashfs-tools")
    say = progress or (lambda _message: None)
    image.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=image.path.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        root = work / "root"
        say(f"collecting Python {interp.version}, its stdlib and libraries")
        _stage_python(interp, root)
        _stage_detain(interp, root)
        _normalise_modes(root)
        out = work / "image"
        out.mkdir()
        say("packing the guest root (squashfs)")
        done = subprocess.run(["mksquashfs", str(root), str(out / "rootfs.squashfs"),
                               "-noappend", "-all-root", "-comp", "lz4", "-quiet",
                               "-no-progress"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DetainError(f"mksquashfs failed: {done.stderr.strip()[-300:]}")
        say("writing the initramfs")
        (out / "initrd.cpio").write_bytes(_initrd(kernel, interp))
        (out / "image.json").write_text(json.dumps({
            "digest": image.digest, "kernel": kernel.version, "python": interp.executable,
            "python_version": interp.version}))
        if image.path.exists():
            shutil.rmtree(image.path)
        out.rename(image.path)
    return image
