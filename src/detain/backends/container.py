"""What the container backends (podman, docker, gvisor) share.

They all start an OCI container from the registry-less skeleton (host/rootfs.py): host
/usr and interpreter read-only, detain's guest dir and the job read-only, the scratch dir
read-write, a private size-capped /tmp, no network, detain's seccomp profile, no
capabilities, no_new_privs. What differs is only how the container is described and
started (an engine's command line, or an OCI bundle for runsc) and how it is stopped.

Engines run as root (or as the caller, rootless); the job's uid, cgroup and limits are
applied by the engine, not by detain's fork-exec step:
  * as root, the job runs as the run's fresh unprivileged uid, inside a cgroup created as
    a child of the run's own (`--cgroup-parent`), so the run's memory and pids caps (set
    and read back by detain, hierarchical in the kernel) hold the container, and the
    kernel's OOM/pids counters attribute limit hits;
  * rootless, cgroup v1 gives the engine no cgroup at all, so the launcher's rlimits
    (RLIMIT_AS for memory, RLIMIT_NPROC) are the limits, and the assurance says so.
No fd can be handed to a process behind an engine or inside gVisor, so the channel is a
FIFO in the run dir, writable but not readable by the job, bind-mounted read-only at
/detain/channel.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from ..errors import DetainError, ProtectionError
from ..host import cgroups, containers, privileges, rootfs
from ..host.rootfs import GUEST_CHANNEL, GUEST_JOB_FIFO, Bind
from ..host.warden import Warden
from ..policy import SCRATCH
from ..result import Result
from .base import Backend, Launch, RunContext
from .bwrap import GUEST_JOB, GUEST_LAUNCHER

JOB_FIFO = "job-fifo"


class ContainerBackend(Backend):
    """Base for backends whose sandbox is an OCI container."""

    warm = True
    signal_as_exit_status = True
    supports_image = False
    delegated_cgroup = False  # the engine places the container's processes itself
    # Sub-cgroups the engine makes under the run's cgroup beside the container's own (which
    # the runtime removes): podman's "conmon". Recorded so that cleanup removes them first.
    engine_cgroups: tuple[str, ...] = ()
    channel_mount_writable = False

    def launch(self, ctx: RunContext) -> Launch:
        policy = ctx.policy
        if policy.image and not self.supports_image:
            raise DetainError(f"the {self.name} backend cannot run a local image (--image); "
                              "use --backend podman or docker for images")
        if policy.trace and not (self.supports_trace or self.outside_trace):
            raise ProtectionError(f"--trace {policy.trace}: {self.trace_refusal()}")
        # The engine (or runsc) needs root for its own work and applies uid and cgroup to
        # the container itself; detain's fork-exec step must leave it as it is.
        ctx.setup.uid = None
        ctx.setup.cgroup_procs = []
        if ctx.cgroup is not None:
            self._record_engine_cgroups(ctx)
        channel_path, channel_fd = self._channel(ctx)
        binds = [] if policy.image else [*rootfs.system_binds(),
                                         *(Bind(d, d) for d in ctx.interpreter.bind_dirs)]
        binds += rootfs.job_binds(ctx.job_dir, ctx.scratch, channel_path,
                                  self.channel_mount_writable)
        if ctx.job_from is not None:
            binds.append(Bind(str(ctx.run.path / JOB_FIFO), ctx.job_from))
        binds += [Bind(str(m.host), m.sandbox, m.writable) for m in policy.mounts]
        for bind in binds:
            _check_path(bind.source)
            _check_path(bind.target)
        python = "python3" if policy.image else ctx.interpreter.executable
        command = ctx.guest_command(python, GUEST_LAUNCHER, GUEST_JOB, channel=GUEST_CHANNEL)
        try:
            launch = self.container_launch(ctx, binds, command, self.user(ctx))
        except BaseException:
            os.close(channel_fd)
            raise
        launch.channel = channel_fd
        return launch

    supports_trace = False

    def trace_refusal(self) -> str:
        """Why `--trace` cannot run on this backend here, and what to use instead."""
        return ("this backend has no kernel-side trace; use --backend gvisor, or podman as "
                "root")

    def container_launch(self, ctx: RunContext, binds: list[Bind], command: list[str],
              user: tuple[int, int]) -> Launch:
        """How this backend starts the container running `command` as `user`."""
        raise NotImplementedError

    def stop(self, ctx: RunContext) -> None:
        """Stop the container if it may still run (the engine's own kill)."""
        raise NotImplementedError

    def warden(self, ctx: RunContext) -> Warden | None:
        """Watch mode: a container runs on when its engine's client (or `runsc run`) dies
        with detain; the warden then removes it with the command the journal holds."""
        records = ctx.run.state.get(containers.KIND)
        if not records:
            return None
        return Warden("watch", ctx.run.path, records[-1]["remove"], records[-1]["env"])

    def user(self, ctx: RunContext) -> tuple[int, int]:
        """The job's uid:gid: the run's fresh uid as root; else the caller's own ids (which
        own the scratch dir), never 0 inside (rootless podman maps them with keep-id)."""
        if ctx.uid is not None:
            return ctx.uid, ctx.uid
        return os.getuid(), os.getgid()

    def skeleton(self, ctx: RunContext) -> Path:
        """The root for this run: the cached skeleton, or, when the policy mounts host
        paths, a private one with their mount points (runtimes would otherwise create them
        in the shared cache, and each set of targets would cache one more skeleton)."""
        if ctx.policy.mounts:
            files = tuple(m.sandbox for m in ctx.policy.mounts if not os.path.isdir(m.host))
            dirs = tuple(m.sandbox for m in ctx.policy.mounts if m.sandbox not in files)
            return rootfs.private_skeleton((*ctx.interpreter.bind_dirs, *dirs),
                                           ctx.run.subdir("rootfs", 0o755), files)
        return rootfs.skeleton(ctx.interpreter.bind_dirs)

    def cgroup_parent(self, ctx: RunContext) -> str | None:
        """The run's cgroup as a path relative to each hierarchy's root, or None."""
        if ctx.cgroup is None:
            return None
        controller, path = next(iter(ctx.cgroup.dirs.items()))
        root = cgroups.ROOT if ctx.cgroup.version == 2 else cgroups.ROOT / controller
        return "/" + str(path.relative_to(root))

    def kill(self, ctx: RunContext, proc) -> None:
        """The job's processes first (as root they all run as the run's uid, outside the
        run's own cgroup), then the engine's removal of a container that may still run."""
        if ctx.uid is not None:
            privileges.kill_uid(ctx.uid)
        if proc.returncode is None:
            self.stop(ctx)
        super().kill(ctx, proc)

    def _record_engine_cgroups(self, ctx: RunContext) -> None:
        """On cgroup v1 the engine creates the run's path in every hierarchy, not only in
        the ones detain limits; all of them, and its own sub-cgroups, go into the journal."""
        parent = self.cgroup_parent(ctx)
        if ctx.cgroup is None or ctx.cgroup.version == 2 or parent is None:
            return
        recorded = set(ctx.run.state.get("cgroup", []))
        hierarchies = [h for h in sorted(cgroups.ROOT.iterdir())
                       if (h / "cgroup.procs").exists()]
        paths = [h / parent.lstrip("/") for h in hierarchies]
        paths += [path / child for child in self.engine_cgroups for path in paths]
        for path in paths:
            if str(path) not in recorded:
                ctx.run.record("cgroup", str(path))

    def job_pipe(self, ctx: RunContext) -> tuple[str, int, int | None]:
        """A FIFO, as for the channel: opened read-write here (never blocking, and it keeps
        a writer until the message is written), readable by the job's uid, bound read-only."""
        path = ctx.run.path / JOB_FIFO
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        os.chmod(path, 0o444)
        return GUEST_JOB_FIFO, fd, None

    @staticmethod
    def _channel(ctx: RunContext) -> tuple[Path, int]:
        """The FIFO the launcher writes to. Opened for reading here first, then made
        write-only for everyone, and bound read-only (a FIFO can still be written on a
        read-only mount, but not chmod-ed): the job, even as its owner when rootless,
        can add records but never read or steal the launcher's hello."""
        path = ctx.run.path / "channel"
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.chmod(path, 0o222)
        return path, fd

    def _fill(self, result: Result, ctx: RunContext, outcome) -> None:
        super()._fill(result, ctx, outcome)
        failures = _v1_memory_failures(ctx)
        if result.limit is None and not outcome.timed_out and result.signal == signal.SIGKILL \
                and failures:
            # cgroup v1 counts an OOM kill in the victim's own cgroup (the container's,
            # removed with it), not in the run's: the run's limit-hit counter attributes it.
            result.limit = "memory"
            result.notes.append(f"memory limit hit: the job was SIGKILLed after the kernel "
                                f"refused {failures} charge(s) at the run's memory limit")
        if ctx.cgroup is None and ctx.uid is None and result.assurance:
            result.notes.append("no cgroup for this container (rootless on cgroup v1): memory "
                                "and process limits are the launcher's rlimits")
            if result.limit is None and not outcome.timed_out and \
                    result.signal == signal.SIGKILL and \
                    result.wall_seconds >= ctx.policy.limits.cpu_seconds:
                # The engine's client is not the job's parent, so no rusage shows its CPU
                # time; RLIMIT_CPU's SIGKILL after at least that much wall time is the sign.
                result.limit = "cpu"
                result.notes.append("CPU time limit hit (RLIMIT_CPU; inferred from SIGKILL "
                                    "after the CPU budget, no cgroup counts CPU here)")

    def host_assurance(self, ctx: RunContext, seen: dict) -> dict[str, Any]:
        policy = ctx.policy
        read_only = ["/ (skeleton)", GUEST_JOB] if not policy.image else \
            [f"/ (image {policy.image})", GUEST_JOB]
        if not policy.image:
            read_only += ["/usr", *ctx.interpreter.bind_dirs]
        assurance = {
            "read_only": read_only + [m.sandbox for m in policy.mounts if not m.writable],
            "writable": [SCRATCH, "/tmp (private tmpfs)"]
            + [m.sandbox for m in policy.mounts if m.writable],
            "limits_from": "cgroup (run's own, parent of the container's)"
            if ctx.cgroup is not None else "rlimits (no cgroup available to the engine)",
            "container": ctx.extra.get("container"),
        }
        if policy.image:
            assurance["interpreter"] = {"path": f"python3 from image {policy.image}",
                                        "flags": list(policy.interpreter_flags)}
        return assurance


def _v1_memory_failures(ctx: RunContext) -> int:
    """How often the kernel found the run's v1 memory cgroup at its limit."""
    if ctx.cgroup is None or ctx.cgroup.version != 1 or "memory" not in ctx.cgroup.dirs:
        return 0
    try:
        return int((ctx.cgroup.dirs["memory"] / "memory.failcnt").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _check_path(path: str) -> None:
    """Engines parse `--mount` specs as comma-separated text: refuse what would split."""
    if any(c in path for c in ",\n"):
        raise DetainError(f"{path!r}: container backends cannot bind a path containing ',' "
                          "or a newline; move or rename it")
