"""Level 4: a disposable QEMU micro-VM with its own kernel, restored from a saved boot.

The job runs under another kernel, so a kernel exploit inside reaches only the guest; the
host sees one unprivileged, seccomp-sandboxed QEMU process with no network device. Each
run restores the same saved VM (booted once by `detain setup microvm`) and hands it the
job after the restore, so runs start fast, always from the same pristine state, and share
nothing. The saved VM already holds the job's process, its interpreter started and waiting
for the job (see microvm/guest_init.py), so a run pays neither a boot nor the interpreter's
start-up. What comes back (stdout, stderr, launcher records, the guest init's status, the
--copy-out tar) arrives on separate virtio ports, each read here with a size cap as hostile
input. --mount trees go in read-only as a tar inside the job message (microvm/transfer.py).
--trace restores another saved VM, one whose init started the outside tracer inside the
guest before the job's process (microvm/trace.py); its records come back on a port of their
own.

Memory: guest RAM is the policy's memory plus the guest's own overhead, rounded to a power
of two (a saved VM fixes its RAM size, so few sizes keep few saved VMs); the job itself is
held to exactly the policy's memory by a cgroup inside the guest, whose OOM kills the guest
init reports.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import DetainError, ProtectionError
from ..host.jobmessage import launcher_message
from ..host.supervise import Capture, Outcome
from ..microvm import cache_root, channel, machine, slots, transfer
from ..microvm import setup as vm
from ..microvm.image import GUEST_JOB, GUEST_LAUNCHER
from ..policy import SCRATCH
from ..result import Result
from . import Probe
from .base import SANDBOX_UID, Backend, Launch, RunContext

QEMU_OVERHEAD = 768 << 20  # QEMU itself and TCG's translated-code cache, beside guest RAM
QEMU_THREADS = 256
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")


class MicroVMBackend(Backend):
    name = "microvm"
    own_limits = True  # the guest kernel's cgroup and file systems hold them
    outside_trace = True  # inside the guest, as guest root (microvm/trace.py)

    def probe(self) -> Probe:
        if platform.machine() != "x86_64":
            return Probe(False, f"the micro-VM backend needs an x86_64 host, not "
                                f"{platform.machine()}")
        reason = vm.missing()
        if reason:
            return Probe(False, reason)
        info = vm.status()
        return Probe(True, version=machine.qemu_version() or None,
                     details=(("accel", str(info["accel"])), ("kernel", str(info["kernel"]))))

    def host_limits(self, policy) -> tuple[int, int]:
        ram = vm.ram_mib(policy.limits.memory_bytes) << 20
        return ram + QEMU_OVERHEAD, QEMU_THREADS

    def launch(self, ctx: RunContext) -> Launch:
        self._refuse_unsupported(ctx)
        traced = bool(ctx.policy.trace)
        prepared = vm.prepare(ctx.interpreter, ctx.policy.limits.memory_bytes,
                              ctx.policy.interpreter_flags, trace=traced)
        message = self._message(ctx)
        paths = dataclasses.astuple(prepared.files)  # QEMU's uid may not reach the cache
        staged = ctx.setup.prepare_stage(ctx.run.path, [Path(p) for p in paths])
        files = machine.Files(*(ctx.setup.remap(p, staged) for p in paths))
        opened: list[int] = []
        try:
            job_fd = os.memfd_create("detain-job", os.MFD_CLOEXEC)
            opened.append(job_fd)
            view = memoryview(message)
            while view:
                view = view[os.write(job_fd, view):]
            os.lseek(job_fd, 0, os.SEEK_SET)
            state_fd = os.open(prepared.state, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(state_fd)
            ports = ("stdout", "stderr", "status", *(("copyout",) if ctx.policy.copy_out else ()),
                     *(("trace",) if traced else ()))
            pipes = {name: os.pipe() for name in ports}
            opened += [fd for pair in pipes.values() for fd in pair]
            slot = slots.acquire(cache_root() / "slots")
            assert slot is not None
            opened.append(slot)
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        outputs = {name: pair[1] for name, pair in pipes.items()}
        outputs["records"] = ctx.channel_fd
        status = ctx.extra["status"] = Capture("status", channel.STATUS_CAP)
        side_channels = [(pipes["status"][0], status.feed)]
        release = []
        if "copyout" in pipes:
            spool = ctx.extra["copy_out"] = transfer.Spool(
                ctx.run.path, transfer.copy_out_cap(ctx.policy.limits.disk_bytes))
            side_channels.append((pipes["copyout"][0], spool.feed))
            release.append(spool.close)
        if traced:
            from ..microvm.trace import GuestTrace  # only traced runs load the tracer's side

            trace = ctx.extra["trace"] = GuestTrace()
            side_channels.append((pipes["trace"][0], trace.feed))
        ctx.extra["prepared"] = prepared
        argv = machine.restore_args(files, prepared.accel, prepared.ram_mib, state_fd, job_fd,
                                    outputs)
        return Launch(argv, env={},
                      pass_fds=(job_fd, state_fd, slot, *(pair[1] for pair in pipes.values())),
                      job_output=(pipes["stdout"][0], pipes["stderr"][0]),
                      side_channels=tuple(side_channels), release=release)

    def outside_tracer(self, ctx: RunContext, launch: Launch) -> Any:
        """The guest's tracer, started by the guest init in the VM saved for traced runs;
        its records arrive on the trace port (microvm/trace.py)."""
        return ctx.extra["trace"]

    @staticmethod
    def _outside_trace(result: Result, ctx: RunContext, tracer: Any) -> None:
        Backend._outside_trace(result, ctx, tracer)
        if result.assurance:
            result.assurance["outside_trace"] = (
                "ptrace tracer inside the guest, as guest root outside the job's cgroup (the "
                f"job runs as uid {SANDBOX_UID}): exec, open, connect/bind/sendto/sendmsg/listen, "
                "unlink, rename, chmod, mkdir and links of every process; the job dies if "
                "the tracer dies")

    @staticmethod
    def _refuse_unsupported(ctx: RunContext) -> None:
        """Rule 4: what the policy asks for and this backend cannot give is an error."""
        policy = ctx.policy
        if policy.network != "none":
            raise ProtectionError("the micro-VM has no network device, so it cannot allow "
                                  f"network access ({policy.network}); use --network none "
                                  "or another backend")
        writable = [str(m.host) for m in policy.mounts if m.writable]
        if writable:
            raise ProtectionError(f"the micro-VM backend shows --mount inputs read-only only "
                                  f"(a copy inside the VM), so it cannot make {writable[0]} "
                                  "writable; use --backend bwrap, podman or docker for :rw "
                                  "mounts, or --copy-out to bring results back")
        if ctx.deps:
            raise DetainError("the micro-VM backend cannot install requirements yet; use "
                              "--backend bwrap for jobs with requirements")
        hidden = next((d for d in ("/tmp", "/dev/shm") for p in ctx.interpreter.bind_dirs
                       if p == d or p.startswith(d + "/")), None)
        if hidden is not None:  # the guest mounts its own tmpfs there, over the image's copy
            raise DetainError(f"the micro-VM mounts its own {hidden}, which hides the "
                              f"interpreter {ctx.interpreter.executable}; use a Python "
                              f"installed outside {hidden} (--python) or another backend")

    def _message(self, ctx: RunContext) -> bytes:
        """The job as the guest init receives it after the restore."""
        lim = ctx.policy.limits
        stdin = ctx.job.stdin
        if isinstance(stdin, int):
            stdin = _read_capped(stdin, lim.disk_bytes)
        script = None
        prefix = [ctx.interpreter.executable, *ctx.policy.interpreter_flags, GUEST_LAUNCHER]
        command = ctx.guest_command(ctx.interpreter.executable, GUEST_LAUNCHER, GUEST_JOB,
                                    channel=str(channel.CHANNEL_FD))
        assert command[:len(prefix)] == prefix  # the saved VM started exactly this prefix
        blobs = {"seed": os.urandom(64), "stdin": stdin or b"", "script": b"",
                 "launcher": launcher_message(command[len(prefix):],
                                                      self.guest_environment(ctx)),
                 "mounts": transfer.pack_mounts(ctx.policy.mounts, lim.disk_bytes)
                 if ctx.policy.mounts else b""}
        if ctx.job.kind == "script":
            script = Path(ctx.job.target).name
            blobs["script"] = (ctx.job_dir / script).read_bytes()
        header = {"disk": lim.disk_bytes, "memory": lim.memory_bytes,
                  "processes": lim.processes, "time": time.time(), "script": script,
                  "mounts": [[m.sandbox, m.host.is_dir()] for m in ctx.policy.mounts],
                  "copy_out": [os.path.relpath(c.sandbox, SCRATCH) for c in ctx.policy.copy_out],
                  "copy_out_cap": transfer.copy_out_cap(lim.disk_bytes)}
        return channel.encode(header, blobs)

    def _fill(self, result: Result, ctx: RunContext, outcome: Outcome) -> None:
        capture = ctx.extra.get("status")
        status = channel.parse_status(bytes(capture.data)) if capture is not None else None
        ctx.extra["guest_status"] = status
        if not outcome.timed_out:
            usage = None if status is None else SimpleNamespace(
                ru_utime=status.utime, ru_stime=status.stime, ru_maxrss=status.maxrss_kib)
            outcome = dataclasses.replace(
                outcome, returncode=status.returncode if status else None, rusage=usage)
        super()._fill(result, ctx, outcome)
        if outcome.timed_out:
            return
        if status is None or status.error:
            detail = status.error if status and status.error else _diagnostics(ctx)
            result.error = result.error or ("the micro-VM ended without reporting how the job "
                                            f"ended{': ' + detail if detail else ''}")
            return
        if status.memory_peak:
            result.peak_memory_bytes = status.memory_peak
        if status.pids_refused:
            result.notes.append(f"process limit reached: {status.pids_refused} fork(s) "
                                "refused (guest kernel)")
        if status.oom_kills and result.limit is None:
            result.limit = "memory"
            result.notes.append("memory limit hit: the guest kernel's OOM killer ended the job "
                                "(guest cgroup)")
        spool = ctx.extra.get("copy_out")
        if spool is not None and result.error is None:
            self._unpack_copy_out(ctx, spool, result)

    @staticmethod
    def _unpack_copy_out(ctx: RunContext, spool: transfer.Spool, result: Result) -> None:
        """Unpack the guest's copy-out tar into a fresh private dir made now, after QEMU has
        ended (so nothing it did can be waiting in there), and make that the run's scratch:
        the shared lifecycle's copy-out then copies from it as from any local scratch dir."""
        if spool.total == 0:
            result.copy_out_error = ("copy-out incomplete: nothing came back from the VM (the "
                                     "job did not end by itself)")
            return
        into = ctx.run.subdir("copy-out", 0o700)
        unpacked = transfer.unpack(spool.file, into, ctx.policy.copy_out,
                                   ctx.policy.limits.disk_bytes)
        ctx.scratch = into
        if spool.truncated:
            unpacked.skip("the rest", f"the VM sent more than {spool.cap} bytes")
        result.notes += unpacked.notes
        result.copy_out_error = unpacked.error

    def host_assurance(self, ctx: RunContext, seen: dict[str, Any]) -> dict[str, Any]:
        prepared = ctx.extra["prepared"]
        status = ctx.extra.get("guest_status")
        return {
            "isolation": "separate guest kernel in a QEMU micro-VM",
            "namespaces": list(NAMESPACES),  # every one is the guest kernel's, not the host's
            "accel": prepared.accel,
            "guest_kernel": status.kernel if status else prepared.kernel.version,
            "host_kernel": platform.release(),
            "guest_kernel_is_host_kernel": False,
            "qemu": machine.qemu_version(),
            "qemu_sandbox": machine.SANDBOX,
            "network_devices": "none (the VM has no network device)",
            "guest_ram_mib": prepared.ram_mib,
            "guest_memory_cgroup": ctx.policy.limits.memory_bytes,
            "vm_state": "restored from a saved boot; fresh copy per run, discarded after",
            "job_process": "started before the save (interpreter up, as the sandbox uid, "
                           "no_new_privs, seccomp), given its job and limits after restore",
            "read_only": ["/", "/usr", *ctx.interpreter.bind_dirs, GUEST_JOB,
                          *(m.sandbox for m in ctx.policy.mounts)],
            "writable": [SCRATCH, "/tmp (guest tmpfs)", "/dev/shm (guest tmpfs)"],
        }


def _read_capped(fd: int, cap: int) -> bytes:
    data = bytearray()
    while chunk := os.read(fd, 1 << 20):
        data += chunk
        if len(data) > cap:
            raise DetainError(f"stdin is larger than {cap} bytes; the micro-VM backend takes "
                              "stdin up front, capped by the disk limit (--disk)")
    return bytes(data)


def _diagnostics(ctx: RunContext) -> str:
    capture = ctx.extra.get("diagnostics")
    if capture is None:
        return ""
    return bytes(capture.data)[-600:].decode("utf-8", "replace").strip()


BACKEND = MicroVMBackend()
