"""The QEMU command lines: one machine shape, booted once to be saved, restored per run.

A saved VM can only be restored into an identical machine, so `machine_args` is the single
source of the device list; only the host ends of the character devices (where the ports'
bytes go) and `-incoming` differ between the boot that saves and the runs that restore.
The machine has no network device at all, no display, no USB, no PCI: a serial console,
one read-only virtio disk (the guest root) and one virtio-serial controller with seven
ports (see guest_init.py). The job port carries a boot message into the boot that saves
and the run's job message into each restore.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DetainError
from ..host import privileges
from ..host.tools import tool_version

QEMU = "qemu-system-x86_64"
PORTS = ("job", "stdout", "stderr", "records", "status", "copyout",
         "trace")  # virtio-serial 1..7
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
READY = b"detain-guest-ready"
BOOT_TIMEOUT = 240.0
# Without AVX the guest's libc takes its SSE string and memory routines, which QEMU's
# emulator runs much faster than emulated AVX2 ones.
TCG_CPU = "max,avx=off,avx2=off"


@dataclass(frozen=True)
class Files:
    """Paths QEMU opens itself (possibly staged copies reachable by the sandbox uid)."""

    vmlinux: str
    initrd: str
    rootfs: str


def qemu() -> str | None:
    return shutil.which(QEMU) or next(
        (p for p in (f"/usr/bin/{QEMU}", f"/usr/local/bin/{QEMU}") if os.path.exists(p)), None)


@functools.lru_cache(maxsize=1)
def qemu_version() -> str:
    path = qemu()
    return (tool_version(path, r"version (\S+)") or "") if path else ""


def hardware_virtualisation() -> bool:
    """Real vmx/svm in the CPU and a usable /dev/kvm; a nested software hypervisor
    (kvm_pvm) exposes /dev/kvm without them, and stock kernels fail to boot on it."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "").split()
    except OSError:
        return False
    return ("vmx" in flags or "svm" in flags) and os.access("/dev/kvm", os.R_OK | os.W_OK)


def tsc_khz() -> int | None:
    """The host's TSC rate: under TCG the guest clock never starts without it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def kernel_cmdline(accel: str) -> str:
    # init_on_free: pages freed before the save (the initramfs, the warm-up run) are zero,
    # and a saved VM stores zero pages as a flag, so the state to restore stays small.
    parts = ["console=ttyS0", "quiet", "panic=-1", "reboot=t", "random.trust_cpu=on",
             "init_on_free=1"]
    khz = tsc_khz()
    if accel == "tcg" and khz:
        parts.append(f"tsc_early_khz={khz}")
    return " ".join(parts)


def machine_args(files: Files, accel: str, ram_mib: int) -> list[str]:
    path = qemu()
    if path is None:
        raise DetainError("qemu-system-x86_64 is missing: apt install qemu-system-x86")
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,tb-size=128", "-cpu", TCG_CPU]
    args = [path, "-M", "microvm,pit=on,pic=on,rtc=on,isa-serial=on", *accel_args,
            "-m", f"{ram_mib}M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
            "-no-reboot", "-sandbox", SANDBOX,
            "-kernel", files.vmlinux, "-initrd", files.initrd,
            "-append", kernel_cmdline(accel),
            "-drive", f"id=root,file={files.rootfs},format=raw,if=none,read-only=on",
            "-device", "virtio-blk-device,drive=root",
            "-device", "virtio-serial-device,max_ports=8", "-serial", "chardev:console"]
    for number, name in enumerate(PORTS, 1):
        args += ["-device", f"virtserialport,chardev={name},nr={number},name=detain.{name}"]
    return args


def _job_input(fd: int) -> list[str]:
    """Port 1 reads from `fd` (a memfd holding one message)."""
    return ["-add-fd", f"fd={fd},set=1", "-chardev", "pipe,id=job,path=/dev/fdset/1"]


def restore_args(files: Files, accel: str, ram_mib: int, state_fd: int, job_fd: int,
                 output_fds: dict[str, int]) -> list[str]:
    """Restore the saved VM; the job arrives on port 1, output leaves through `output_fds`
    (a port without an fd there, such as an unused copy-out port, goes nowhere)."""
    args = machine_args(files, accel, ram_mib)
    args += ["-chardev", "null,id=console", *_job_input(job_fd)]
    for number, name in enumerate(PORTS[1:], 2):
        if name not in output_fds:
            args += ["-chardev", f"null,id={name}"]
            continue
        args += ["-add-fd", f"fd={output_fds[name]},set={number}",
                 "-chardev", f"file,id={name},path=/dev/fdset/{number},append=on"]
    return [*args, "-incoming", f"fd:{state_fd}"]


class _Qmp:
    """Just enough of QEMU's monitor protocol to save a running VM to an fd."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.reader.readline()  # greeting
        self.call("qmp_capabilities")

    def call(self, command: str, fds: list[int] | None = None, **arguments: object) -> dict:
        data = json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        while True:
            reply = json.loads(self.reader.readline() or b"{}")
            if "return" in reply:
                return reply["return"]
            if "error" in reply or not reply:
                raise DetainError(f"QEMU refused {command}: {reply.get('error', 'no reply')}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def boot_and_save(files: Files, accel: str, ram_mib: int, state: Path, boot: bytes) -> float:
    """Cold-boot the guest to its waiting point and save it to `state`; returns boot seconds.
    `boot` is the guest init's boot message (how to start the job's process ahead)."""
    boot_fd = os.memfd_create("detain-boot", os.MFD_CLOEXEC)
    with tempfile.TemporaryDirectory(prefix="detain-boot-") as tmp:
        os.write(boot_fd, boot)
        os.lseek(boot_fd, 0, os.SEEK_SET)
        monitor = os.path.join(tmp, "qmp")
        args = machine_args(files, accel, ram_mib)
        args += ["-chardev", "stdio,id=console,signal=off", "-qmp",
                 f"unix:{monitor},server=on,wait=off", *_job_input(boot_fd)]
        args += [a for name in PORTS[1:] for a in ("-chardev", f"null,id={name}")]
        started = time.monotonic()
        privileges.load_libc()
        try:
            # Dies with detain (parent-death signal): a killed setup leaves no QEMU behind.
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env={}, pass_fds=(boot_fd,),
                                    preexec_fn=privileges.ChildSetup())
        finally:
            os.close(boot_fd)
        try:
            console = _wait_ready(proc, started + BOOT_TIMEOUT)
            booted = time.monotonic() - started
            if console is not None:
                raise DetainError(f"the micro-VM did not boot ({accel}): "
                                  + console.decode("utf-8", "replace")[-600:].strip())
            _save(monitor, state)
            return booted
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def _wait_ready(proc: subprocess.Popen, deadline: float) -> bytes | None:
    """None once the guest says it is ready, else the console output seen so far."""
    assert proc.stdout is not None
    seen = b""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        if not chunk:
            return seen or b"QEMU exited"
        seen = (seen + chunk)[-8192:]
        if READY in seen:
            return None
    return seen + b" [timed out]"


def _save(monitor: str, state: Path) -> None:
    for _ in range(100):
        if os.path.exists(monitor):
            break
        time.sleep(0.02)
    qmp = _Qmp(monitor)
    tmp = state.with_name(f".{state.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        qmp.call("getfd", fds=[fd], fdname="state")
        qmp.call("migrate", uri="fd:state")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = qmp.call("query-migrate").get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise DetainError(f"saving the micro-VM failed (migration {status})")
            time.sleep(0.05)
        else:
            raise DetainError("saving the micro-VM timed out")
        os.fsync(fd)
        os.replace(tmp, state)
    finally:
        os.close(fd)
        qmp.close()
        if tmp.exists():
            tmp.unlink()
