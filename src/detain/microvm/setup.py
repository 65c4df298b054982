"""`detain setup microvm` and what a run needs: kernel, image and saved VM, built on demand.

`setup()` fetches the kernel (the only step that needs the network), builds the image,
picks the accelerator (KVM only with real vmx/svm *and* a successful test boot, else TCG),
boots and saves the VM for the default memory size, and verifies by running a job through
the backend. Every step is skipped when its result is already in the cache, so running it
again is cheap. `prepare()` is the run-time side: it rebuilds an image or saved VM whose
digest changed (an upgraded detain or interpreter) under a lock, so concurrent runs build
it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..backends.base import SANDBOX_UID
from ..errors import BackendUnavailable, DetainError
from ..host import seccomp
from ..host.interpreter import Interpreter, find_interpreter
from ..policy import Limits, Policy
from . import cache_root, channel, image, kernel, machine

Progress = Callable[[str], None]
GUEST_OVERHEAD = 128 << 20  # guest kernel, init and page cache beside the job's memory
MIN_RAM_MIB = 256
TOOLS = (("mksquashfs", "squashfs-tools"), ("lz4", "lz4"), ("ldd", "libc-bin"))


@dataclass(frozen=True)
class Prepared:
    """What one restore needs: the three boot files, the saved state, the machine shape,
    and the boot message the saved VM was started with."""

    kernel: kernel.Kernel
    image: image.Image
    accel: str
    ram_mib: int
    state: Path
    boot: bytes

    @property
    def files(self) -> machine.Files:
        return machine.Files(str(self.kernel.vmlinux), str(self.image.initrd),
                             str(self.image.rootfs))


def ram_mib(memory_bytes: int) -> int:
    """Guest RAM for a memory limit: a power of two, so few saved VMs cover every limit
    (untouched guest RAM costs the host nothing); the job's own cap is a guest cgroup."""
    need = (memory_bytes + GUEST_OVERHEAD) >> 20
    size = MIN_RAM_MIB
    while size < need:
        size *= 2
    return size


def _config() -> dict:
    try:
        data = json.loads((cache_root() / "current.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _lock() -> int:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def missing() -> str | None:
    """Why the backend cannot run here at all (a tool or `detain setup microvm` missing)."""
    if machine.qemu() is None:
        return "qemu-system-x86_64 is missing: apt install qemu-system-x86"
    config = _config()
    if kernel.Kernel.load(cache_root() / str(config.get("kernel", "-"))) is None or \
            config.get("accel") not in ("tcg", "kvm"):
        return "the guest kernel and image are not prepared: run `detain setup microvm`"
    return None


def boot_message(interp: Interpreter, flags: tuple[str, ...], trace: bool = False) -> bytes:
    """What the saved VM's init starts ahead of the job: this interpreter with these flags
    running the launcher (waiting for its job), as the sandbox uid under this seccomp filter,
    and with `trace` the outside tracer that follows it (microvm/trace.py). Any change to
    it is a different saved VM."""
    traced = None
    if trace:
        from .trace import boot_config  # only traced runs load the tracer's side

        traced = boot_config(interp.executable)
    return channel.boot_message(interp.executable, flags, SANDBOX_UID,
                                seccomp.filter_path().read_bytes(), traced)


def state_path(img: image.Image, accel: str, ram: int, boot: bytes) -> Path:
    tag = hashlib.sha256(boot).hexdigest()[:12]
    return cache_root() / "states" / f"{img.digest}-{accel}-{ram}m-{tag}.state"


def prepare(interp: Interpreter, memory_bytes: int, flags: tuple[str, ...],
            progress: Progress | None = None, trace: bool = False) -> Prepared:
    """Everything a restore needs, building a stale image or saved VM first (a VM saved for
    other interpreter flags, RAM or `trace` is another file, booted here on first use)."""
    reason = missing()
    if reason:
        raise BackendUnavailable(reason)
    config = _config()
    kern = kernel.Kernel.load(cache_root() / config["kernel"])
    assert kern is not None
    img = image.locate(cache_root(), kern, interp)
    ram = ram_mib(memory_bytes)
    boot = boot_message(interp, flags, trace)
    prepared = Prepared(kern, img, config["accel"], ram,
                        state_path(img, config["accel"], ram, boot), boot)
    if img.ready() and prepared.state.is_file():
        return prepared
    fd = _lock()
    try:
        if not img.ready():
            image.build(img, kern, interp, progress)
            _prune(img)
        if not prepared.state.is_file():
            _save(prepared, progress)
    finally:
        os.close(fd)
    return prepared


def _prune(current: image.Image) -> None:
    """Drop images for the same interpreter that `current` replaces, and their saved VMs."""
    python = image.describe(current).get("python")
    for other in cache_root().glob("image-*"):
        if other != current.path and image.describe(image.Image(other, "")).get("python") \
                == python:
            shutil.rmtree(other, ignore_errors=True)
    live = {path.name.removeprefix("image-") for path in cache_root().glob("image-*")}
    for state in (cache_root() / "states").glob("*.state"):
        if state.name.split("-", 1)[0] not in live:
            state.unlink(missing_ok=True)


def _save(prepared: Prepared, progress: Progress | None) -> float:
    if progress:
        progress(f"booting the guest once ({prepared.accel}, {prepared.ram_mib} MiB) to save it")
    prepared.state.parent.mkdir(parents=True, exist_ok=True)
    shape = prepared.state.name.split("-", 1)[1]  # same machine and boot, older image
    for stale in prepared.state.parent.glob(f"*-{shape}"):
        stale.unlink()
    return machine.boot_and_save(prepared.files, prepared.accel, prepared.ram_mib,
                                 prepared.state, prepared.boot)


def _check_tools() -> None:
    for tool, package in TOOLS:
        if shutil.which(tool) is None:
            raise DetainError(f"{tool} is missing: apt install {package}")
    if machine.qemu() is None:
        raise DetainError("qemu-system-x86_64 is missing: apt install qemu-system-x86")
    image._busybox()


def _fetch_kernel(say: Progress) -> kernel.Kernel:
    root = cache_root()
    current = kernel.Kernel.load(root / str(_config().get("kernel", "-")))
    try:
        package = kernel.newest_package()
    except DetainError:
        if current is not None:
            say("apt could not be asked for a newer kernel; keeping the cached one")
            return current
        raise
    if current is None or current.path.name != package:
        say(f"fetching {package} with apt-get download")
    return kernel.fetch(root, package)


def _choose_accel(kern: kernel.Kernel, img: image.Image, boot: bytes,
                  say: Progress) -> tuple[str, float]:
    """KVM when the CPU really has it and a test boot succeeds there; TCG otherwise."""
    ram = ram_mib(Limits().memory_bytes)
    if machine.hardware_virtualisation():
        prepared = Prepared(kern, img, "kvm", ram, state_path(img, "kvm", ram, boot), boot)
        try:
            return "kvm", _save(prepared, say)
        except DetainError as exc:
            say(f"KVM test boot failed ({str(exc)[:200]}); using TCG")
    prepared = Prepared(kern, img, "tcg", ram, state_path(img, "tcg", ram, boot), boot)
    if prepared.state.is_file():
        return "tcg", 0.0
    return "tcg", _save(prepared, say)


def setup(progress: Progress | None = None, python: str | None = None) -> dict:
    """Prepare and verify the micro-VM backend; idempotent. Returns what `status()` returns
    plus the cold-boot and first-run timings of this call."""
    say = progress or (lambda _message: None)
    _check_tools()
    fd = _lock()
    try:
        kern = _fetch_kernel(say)
        interp = find_interpreter(python)
        img = image.build(image.locate(cache_root(), kern, interp), kern, interp, say)
        config = _config()
        boot = boot_message(interp, Policy().interpreter_flags)
        if config.get("kernel") == kern.path.name and config.get("accel") in ("tcg", "kvm") \
                and state_path(img, config["accel"], ram_mib(Limits().memory_bytes),
                               boot).is_file():
            accel, booted = config["accel"], 0.0
        else:
            accel, booted = _choose_accel(kern, img, boot, say)
        tmp = cache_root() / "current.json.tmp"
        tmp.write_text(json.dumps({"kernel": kern.path.name, "accel": accel}))
        os.replace(tmp, cache_root() / "current.json")
    finally:
        os.close(fd)
    say("verifying: running a job in a restored VM")
    started = time.monotonic()
    from ..api import run

    settings = {"python": python} if python else {}
    result = run(code="print('detain-microvm-ok')", backend="microvm", min_level=4, **settings)
    if result.stdout != b"detain-microvm-ok\n":
        raise DetainError("the micro-VM was prepared but a test job failed: "
                          f"{result.error or result.stderr[-300:].decode('utf-8', 'replace')}")
    report = status()
    report.update(cold_boot_seconds=round(booted, 2) if booted else None,
                  verify_run_seconds=round(time.monotonic() - started, 3))
    return report


def status() -> dict:
    """For `detain doctor`: whether the backend is ready, with accelerator and versions."""
    reason = missing()
    config = _config()
    kern = kernel.Kernel.load(cache_root() / str(config.get("kernel", "-")))
    return {"available": reason is None, "reason": reason, "accel": config.get("accel"),
            "kvm_hardware": machine.hardware_virtualisation(),
            "kernel": kern.version if kern else None, "qemu": machine.qemu_version() or None,
            "cache": str(cache_root())}
