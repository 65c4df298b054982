"""The lifecycle every host-driven backend shares.

A backend only says how to *launch* its sandbox (`launch`) and what it can see of it
(`probe`, `host_assurance`). Creating the run dir, staging the job, limits, the channel,
supervision, limit attribution, copy-out and cleanup happen here, once, for all of them.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DetainError, ProtectionError
from ..guest import LAUNCHER
from ..host import cgroups, deps, privileges, rundir, totals
from ..host.interpreter import Interpreter, find_interpreter
from ..host.jobmessage import launcher_message
from ..host.supervise import (
    Capture,
    Outcome,
    await_ready,
    cpu_counted_inside,
    discard,
    kill_group,
    spawn,
    supervise,
)
from ..host.warden import Warden
from ..job import Job
from ..policy import SCRATCH, Policy
from ..report.events import collect as collect_events
from ..result import Result
from . import BACKENDS, Probe

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

    from ..host.tracer import OutsideTrace
    from ..net.session import EgressSession

GUEST_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_UID = 1000
DIAGNOSTICS_CAP = 64 << 10


@dataclass
class Launch:
    """How to start the sandbox; `pass_fds` are handed to it and closed here once it runs.

    Without a `cwd`, the sandbox machinery starts in the run dir: engines drop files in
    their working directory (conmon writes `oom` there), never in the caller's.

    `release` frees host-side resources the launch holds for the child's setup step (a
    Landlock ruleset's fd, close-on-exec so never inherited), called after the run.
    """

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    cwd: str | None = None
    # Read ends carrying the job's stdout and stderr when they are not the sandbox
    # process's own (a VM's ports); the process's own output is then only diagnostics.
    job_output: tuple[int, int] | None = None
    # More (read fd, sink) streams the sandbox writes to. Every read fd here and in
    # job_output is closed by `run` afterwards.
    side_channels: tuple[tuple[int, Callable[[bytes], None]], ...] = ()
    release: list[Callable[[], None]] = field(default_factory=list)
    # The channel's read end when the sandbox cannot inherit the pipe (a container behind
    # an engine or gVisor reaches a FIFO instead); the launcher then gets its path.
    channel: int | None = None

    def read_fds(self) -> list[int]:
        return [*(self.job_output or ()), *(fd for fd, _ in self.side_channels),
                *(() if self.channel is None else (self.channel,))]


@dataclass
class RunContext:
    """Everything prepared on the host for one run, handed to the backend's `launch`.

    `job` is None while a warm-capable backend launches: its launcher then starts with
    `--job-from`, waiting on `job_from` for the rest of its command, sent once the job
    is known (`launcher_args`)."""

    job: Job | None
    policy: Policy
    run: rundir.RunDir
    interpreter: Interpreter
    scratch: Path
    job_dir: Path
    channel_fd: int
    uid: int | None
    cgroup: cgroups.Cgroup | None
    setup: privileges.ChildSetup
    deps: bool = False
    launcher_options: list[str] = field(default_factory=list)
    network: EgressSession | None = None  # set when the policy has an allow-list
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    job_from: str | None = None  # where a launcher started ahead reads its job (guest side)
    guest_paths: tuple[str, str] = ("", "")  # the job dir and channel as the guest sees them
    label: str | None = None  # shown in the waiting launcher's command line, for `ps`

    @property
    def rlimits(self) -> str:
        """The launcher's limits; address space only when no cgroup holds memory."""
        lim = self.policy.limits
        values = {"CPU": math.ceil(lim.cpu_seconds), "NPROC": lim.processes,
                  "FSIZE": lim.disk_bytes, "NOFILE": lim.open_files, "CORE": 0}
        if self.cgroup is None:
            values["AS"] = lim.memory_bytes
        return ",".join(f"{k}={v}" for k, v in values.items())

    def guest_command(self, python: str, launcher: str, job_dir: str,
                      channel: str | None = None) -> list[str]:
        """The command that runs inside the sandbox: interpreter, launcher, job."""
        self.guest_paths = (job_dir, str(self.channel_fd) if channel is None else channel)
        prefix = [python, *self.policy.interpreter_flags, launcher]
        if self.job is None:
            label = ["--label", self.label] if self.label else []
            return [*prefix, "--job-from", self.job_from, "--ready", self.guest_paths[1], *label]
        return [*prefix, *self.launcher_args()]

    def launcher_args(self) -> list[str]:
        """The launcher's arguments from its channel on: limits, options, the job."""
        job_dir, channel = self.guest_paths
        target = self.job.target
        if self.job.kind == "script":
            target = f"{job_dir}/{Path(self.job.target).name}"
        options = list(self.launcher_options)
        if self.deps:
            options += ["--deps", f"{job_dir}/{deps.DEPS_DIR}"]
        if self.network is not None:
            options += self.network.launcher_options()
        return [channel, self.rlimits, *options, self.job.kind, target, *self.job.args]

    def guest_env(self, home: str) -> dict[str, str]:
        return {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "HOME": home, **self.policy.env}


@dataclass
class Started:
    """A run whose sandbox process exists: waiting for its job, or (a backend that needs
    the job to launch) already given it. Owns the run dir and every fd until released."""

    policy: Policy
    run: rundir.RunDir
    host_fds: list[int] = field(default_factory=list)  # the channel's read end first
    child_fds: list[int] = field(default_factory=list)  # closed once the child exists
    ctx: RunContext | None = None
    launch: Launch | None = None
    proc: subprocess.Popen | None = None
    job_fd: int | None = None  # the job pipe's write end while the launcher waits
    network: EgressSession | None = None
    tracer: OutsideTrace | None = None  # the outside tracer, when the policy asks for one

    @property
    def channel_fd(self) -> int:
        """The host's end of the records channel (a FIFO's, where the launch made one)."""
        channel = self.launch.channel if self.launch is not None else None
        return self.host_fds[0] if channel is None else channel


class Backend:
    """Base for backends that start a sandbox process on this host."""

    name = ""
    # True: the launcher can start before its job is known (`--job-from`), so a sandbox
    # can be started ahead as a warm spare; every run takes this path.
    warm = False
    extra_pids = 0  # processes the sandbox machinery itself needs inside the pids limit
    always_venv = False  # True: a (possibly empty) venv is built even without requirements
    # True: the sandbox has a network namespace of its own, and `launch` shows
    # ctx.network.host_dir at net.GUEST_NET_DIR, so an allow-list can be enforced.
    own_network_namespace = False
    # True: the sandbox process is detain's own child, so (unprivileged) it can join a run
    # cgroup in the user's delegated cgroup v2 subtree; an engine places its own.
    delegated_cgroup = True
    # True: the sandbox has a kernel of its own that holds every limit as a total inside.
    own_limits = False
    # True: `--trace` runs the outside tracer (host/tracer.py) on this backend's sandbox.
    outside_trace = False

    @property
    def level(self) -> int:
        return BACKENDS[self.name].level

    def probe(self) -> Probe:
        raise NotImplementedError

    def launch(self, ctx: RunContext) -> Launch:
        raise NotImplementedError

    def kill(self, ctx: RunContext, proc) -> None:
        """End the whole sandbox: the process group, then anything left in cgroup or uid.

        A cgroup holds every process of the run (none can leave it), so the slower uid
        sweep is needed only without one; cleanup runs it once more regardless.
        """
        kill_group(proc)
        if ctx.cgroup is not None:
            ctx.cgroup.kill()
        elif ctx.uid is not None:
            privileges.kill_uid(ctx.uid)

    def warden(self, ctx: RunContext) -> Warden | None:
        """The run's warden (host/warden.py): it ends the sandbox process on the wall
        clock even if detain is stopped, and sweeps the run at once if detain dies."""
        return Warden("watch", ctx.run.path)

    def scratch_capped(self, ctx: RunContext) -> bool:
        """Whether the scratch dir is a size-capped tmpfs (the disk cap a total the kernel
        holds): detain mounts one as root; otherwise the host can only watch it."""
        return ctx.uid is not None

    def host_limits(self, policy: Policy) -> tuple[int, int]:
        """Memory and process caps of the host cgroup that holds the whole sandbox."""
        return policy.limits.memory_bytes, policy.limits.processes + self.extra_pids

    def host_assurance(self, ctx: RunContext, seen: dict[str, Any]) -> dict[str, Any]:
        """Backend-specific observations to add to the common assurance."""
        return {}

    def guest_home(self, ctx: RunContext) -> str:
        """HOME inside: the scratch dir, as the sandbox sees it."""
        return SCRATCH

    def guest_environment(self, ctx: RunContext) -> dict[str, str]:
        """The job's whole environment, wherever a backend hands it over (launch or message)."""
        return ctx.guest_env(home=self.guest_home(ctx))

    def job_pipe(self, ctx: RunContext) -> tuple[str, int, int | None]:
        """Where a launcher started ahead reads its job: (the guest's name for it, the
        host's write end, an fd the sandbox inherits or None). A pipe the child inherits."""
        read_end, write_end = os.pipe()
        return str(read_end), write_end, read_end

    def accept(self, ctx: RunContext, job: Job) -> None:
        """Refuse, with a DetainError, a job this backend cannot run under this policy."""

    def run(self, job: Job, policy: Policy, *, stdout: Callable[[bytes], None] | None = None,
            stderr: Callable[[bytes], None] | None = None, label: str | None = None) -> Result:
        """Run `job` in a fresh sandbox and return what happened; always cleans up.

        `label` names the run in the host's process list, where the job's own command
        line no longer is once the launcher starts ahead of it."""
        return self.finish(self.start(policy, None if self.warm else job, label=label), job,
                           stdout=stdout, stderr=stderr)

    def start(self, policy: Policy, job: Job | None = None, *, label: str | None = None,
              forker: Callable[[RunContext, Started], Any] | None = None) -> Started:
        """Create a run's state and start its sandbox; without a job (warm-capable
        backends only) the launcher waits inside for the job `finish` sends it.

        Everything the policy decides happens here (uid, cgroup, mounts, seccomp, the
        proxy, staged requirements), so a spare costs its job nothing but the message.
        A `forker` (a warm Sandbox's zygote, host/zygote.py) makes the sandbox process
        instead of `launch` and an exec: it confines itself, with its own scratch tmpfs."""
        if job is None and not self.warm:
            raise DetainError(f"the {self.name} backend cannot start ahead of its job")
        if forker is None:  # a zygote swept when it started; its runs are its own
            rundir.sweep()
        run = rundir.RunDir()
        started = None
        try:
            read_fd, write_fd = os.pipe()
            started = Started(policy, run, host_fds=[read_fd], child_fds=[write_fd])
            ctx = started.ctx = self._prepare(job, policy, run, write_fd,
                                              forked=forker is not None)
            ctx.label = label
            if policy.allow_hosts or policy.sinkhole:  # net code loads only for runs using it
                from ..net import session as egress

                started.network = ctx.network = egress.start(self, ctx)
            if job is None:
                ctx.job_from, started.job_fd, inherited = self.job_pipe(ctx)
                if inherited is not None:
                    started.child_fds.append(inherited)
            else:
                self.accept(ctx, job)
            if forker is not None and job is None:
                started.launch = Launch([], {})
                started.proc = forker(ctx, started)
                while started.child_fds:
                    os.close(started.child_fds.pop())
                await_ready(started.proc, started.channel_fd, policy.limits.wall_seconds)
                return started
            launch = started.launch = self.launch(ctx)
            # Exec'd after the drop to the run's uid, which may not reach it where it lies.
            launch.argv[0] = ctx.setup.program(run.path, launch.argv[0])
            if policy.trace and self.outside_trace:
                started.tracer = self.outside_tracer(ctx, launch)
            elif policy.trace and not getattr(self, "supports_trace", False):
                raise ProtectionError(f"--trace: the {self.name} backend cannot be traced "
                                      "from outside; use --backend bwrap, landlock, gvisor, "
                                      "microvm, or podman as root")
            started.child_fds += launch.pass_fds
            started.host_fds += launch.read_fds()
            started.proc = spawn(launch.argv, env=launch.env, cwd=launch.cwd or str(run.path),
                                 preexec=ctx.setup if ctx.setup.needed() else None,
                                 pass_fds=tuple(started.child_fds),
                                 close_after_start=started.child_fds,
                                 warden=self.warden(ctx))
            if started.tracer is not None:
                started.tracer.started()
            if job is None:
                await_ready(started.proc, started.channel_fd, policy.limits.wall_seconds)
        except BaseException:
            if started is None:
                run.close()
            else:
                self._release(started)
            raise
        return started

    def finish(self, started: Started, job: Job, *,
               stdout: Callable[[bytes], None] | None = None,
               stderr: Callable[[bytes], None] | None = None,
               cancel: int | None = None,
               defer: Callable[[Callable[[], None]], None] | None = None) -> Result:
        """Give a started sandbox its job (if it waits for one), supervise it to the end,
        and remove everything the run created, whatever happens.

        With `defer`, a run that ended normally hands the removal of its remains (run dir,
        mounts, cgroup dirs: no process, which is dead and reaped by then) to `defer`
        instead of removing them before returning; a warm Sandbox does this on its own
        thread, so the caller gets the result first."""
        policy = started.policy
        result = Result(backend=self.name, level=self.level, job=job.describe(),
                        policy=policy.describe())
        ended = False
        try:
            ctx, launch = started.ctx, started.launch
            if started.job_fd is not None:
                self._send_job(started, job)
            out = Capture("stdout", policy.limits.output_bytes, stdout)
            err = Capture("stderr", policy.limits.output_bytes, stderr)
            own_out, own_err, extra = out, err, list(launch.side_channels)
            if launch.job_output is not None:
                own_out = own_err = ctx.extra["diagnostics"] = Capture("diagnostics",
                                                                       DIAGNOSTICS_CAP)
                extra += [(launch.job_output[0], out.feed), (launch.job_output[1], err.feed)]
            proc, started.proc = started.proc, None
            watch = None
            if not (self.scratch_capped(ctx) or self.own_limits):  # the host watches it
                from ..host.disk_watch import DiskWatch  # loads ctypes: only runs that need it

                watch = DiskWatch(ctx.scratch, policy.limits.disk_bytes,
                                  lambda: self.kill(ctx, proc))
            try:
                outcome = supervise(
                    proc, timeout=policy.limits.wall_seconds, stdout=own_out, stderr=own_err,
                    stdin=job.stdin, channel=started.channel_fd,
                    kill=lambda proc: self.kill(ctx, proc), extra=extra, cancel=cancel)
            finally:
                over = watch.finish() if watch is not None else None
                peak = watch.peak if watch is not None else 0
            outcome.stdout, outcome.stderr = out, err
            self._fill(result, ctx, outcome)
            if over is not None and result.assurance:
                result.limit = "disk"
                result.notes.append(f"disk limit hit: {over} (cap {policy.limits.disk_bytes >> 20}"
                                    f" MiB, {peak >> 20} MiB seen by the host); the job was "
                                    "ended")
            if started.network is not None:
                started.network.finish(result)
            if started.tracer is not None:
                self._outside_trace(result, ctx, started.tracer)
            if policy.copy_out and result.error is None:
                from ..host.copyout import bring_out  # only runs that copy out load it

                bring_out(result, ctx.scratch, policy.copy_out, policy.limits.disk_bytes)
            ended = True
        finally:
            if ended and defer is not None:
                defer(lambda: self._release(started))
            elif ended:
                try:
                    self._release(started)
                except DetainError as exc:  # the Result stands (rule 3); say what was left
                    result.notes.append(f"cleanup: {exc}")
            else:
                self._release(started)
        return result

    def discard(self, started: Started) -> None:
        """Remove a started sandbox that will get no job (a spare no longer wanted)."""
        self._release(started)

    def _send_job(self, started: Started, job: Job) -> None:
        """Stage the job where the waiting launcher finds it, then send it its command."""
        ctx = started.ctx
        self.accept(ctx, job)
        ctx.job = job
        self._stage_script(job, ctx.job_dir)
        message = launcher_message(ctx.launcher_args(), self.guest_environment(ctx))
        fd, started.job_fd = started.job_fd, None
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            pass  # the sandbox died while it waited: supervising it reports how
        finally:
            os.close(fd)

    def _release(self, started: Started) -> None:
        ctx = started.ctx
        try:
            if started.proc is not None:
                discard(started.proc, lambda proc: self.kill(ctx, proc))
                started.proc = None
            if started.network is not None:
                started.network.stop()
            if started.tracer is not None:
                started.tracer.close()
        finally:
            fds = [*started.host_fds, *started.child_fds]
            if started.job_fd is not None:
                fds.append(started.job_fd)
            started.host_fds, started.child_fds, started.job_fd = [], [], None
            for fd in fds:
                os.close(fd)
            for release in started.launch.release if started.launch is not None else ():
                release()
            started.run.close()

    def outside_tracer(self, ctx: RunContext, launch: Launch) -> OutsideTrace:
        """This run's tracer, started, and joined in the sandbox process's fork-exec step."""
        from ..host.tracer import OutsideTrace  # only traced runs load it

        tracer = OutsideTrace(ctx.run.path, self.trace_machinery(launch))
        ctx.setup.confine.append(tracer.child_step)
        return tracer

    def trace_machinery(self, launch: Launch) -> str | None:
        """The sandbox tool the process first execs (whose own processes are not the
        job's), or None when its first exec is already the job's interpreter."""
        return None

    @staticmethod
    def _outside_trace(result: Result, ctx: RunContext, tracer: OutsideTrace) -> None:
        """The tracer's events into the behaviour, merged with the audit hook's."""
        from ..report.outside_trace import merge

        own = (*ctx.interpreter.bind_dirs, str(LAUNCHER.parent), str(ctx.run.path))
        setup = merge(result.behaviour, tracer.collect(), own, ctx.policy.wants_packages)
        if setup:
            result.notes.append(f"outside trace: {setup} syscall(s) of detain's own "
                                "requirements install (pip, before the job) left out")
        if result.assurance:
            result.assurance["outside_trace"] = (
                f"ptrace tracer outside the sandbox (uid {os.geteuid()}): exec, open, "
                "connect/bind/sendto/sendmsg/listen, unlink, rename, chmod, mkdir and links "
                "of every process; the job dies if the tracer dies")

    @staticmethod
    def _stage_script(job: Job, job_dir: Path) -> None:
        if job.kind == "script":
            staged = job_dir / Path(job.target).name
            try:
                source = os.open(job.target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                 | os.O_CLOEXEC)
            except OSError as exc:
                raise DetainError(f"script {job.target!r}: {exc.strerror} (a symlink or a "
                                  "file that went away is not run)") from None
            try:
                if not stat.S_ISREG(os.fstat(source).st_mode):
                    raise DetainError(f"script {job.target!r} is no longer a regular file")
                with open(source, "rb", closefd=False) as src, open(staged, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            finally:
                os.close(source)
            os.chmod(staged, 0o644)

    def _prepare(self, job: Job | None, policy: Policy, run: rundir.RunDir,
                 channel_fd: int, forked: bool = False) -> RunContext:
        uid = privileges.fresh_uid() if privileges.is_root() else None
        setup = privileges.ChildSetup(uid=uid)
        if uid is not None:
            privileges.load_libc()
            run.record("uid", uid)
        scratch = run.subdir("scratch", 0o700)
        if uid is not None and not forked:  # a forked run mounts its own
            run.record("mount", str(scratch))
            privileges.mount_scratch(scratch, policy.limits.disk_bytes, uid)
        job_dir = run.subdir("job", 0o755)
        if job is not None:
            self._stage_script(job, job_dir)
        with_deps = deps.stage(policy, job_dir, always=self.always_venv)
        cgroup = None
        if uid is not None:
            try:
                cgroup = cgroups.Cgroup.create(run, *self.host_limits(policy), v1=(
                    cgroups.FORKED_V1 if forked else cgroups.V1_CONTROLLERS))
            except OSError as exc:
                raise DetainError(f"could not set up cgroup limits ({exc}); check that "
                                  "/sys/fs/cgroup is writable or run detain unprivileged") from None
        why = ""
        if uid is None and not self.own_limits:
            cgroup, why = self._delegated_cgroup(run, policy)
        if cgroup is not None:
            setup.cgroup_procs = cgroup.procs_files
        ctx = RunContext(job, policy, run, find_interpreter(policy.python), scratch, job_dir,
                         channel_fd, uid, cgroup, setup, deps=with_deps)
        if not self.own_limits:
            capped = self.scratch_capped(ctx)
            totals.require(policy.limits, cgroup, why, capped)
            held = totals.statement(policy.limits, cgroup, capped)
            ctx.notes += [f"limits: {name} {held[name]}" for name in ("memory", "disk")
                          if "total" not in held[name]]
        return ctx

    def _delegated_cgroup(self, run: rundir.RunDir,
                          policy: Policy) -> tuple[cgroups.Cgroup | None, str]:
        """Unprivileged: a run cgroup in the user's delegated subtree, where there is one
        and this backend's process can join it; else None and why not."""
        if not self.delegated_cgroup:
            return None, ("the container engine places the container itself, and rootless "
                          "podman on cgroup v1 ignores limits")
        _, why = cgroups.delegation()
        try:
            return cgroups.Cgroup.in_delegation(run, *self.host_limits(policy)), why
        except OSError as exc:
            return None, f"the delegated cgroup could not be set up: {exc.strerror or exc}"

    def _fill(self, result: Result, ctx: RunContext, outcome: Outcome) -> None:
        limits = ctx.policy.limits
        result.stdout, result.stderr = bytes(outcome.stdout.data), bytes(outcome.stderr.data)
        result.stdout_truncated = outcome.stdout.truncated
        result.stderr_truncated = outcome.stderr.truncated
        result.wall_seconds = round(outcome.ended - outcome.started, 4)
        result.timed_out = outcome.timed_out
        if outcome.rusage is not None:
            result.cpu_seconds = round(outcome.rusage.ru_utime + outcome.rusage.ru_stime, 4)
            result.peak_memory_bytes = outcome.rusage.ru_maxrss * 1024
        code = outcome.returncode
        if code is not None and code < 0:
            result.signal = -code
        elif code is not None and self.signal_as_exit_status and 128 < code < 160:
            result.signal = code - 128
        else:
            result.exit_code = code
        hello = next((r for r in outcome.records if r.get("type") == "hello"), None)
        if hello is None and not outcome.timed_out:
            tail = result.stderr[-2000:].decode("utf-8", "replace").strip()
            result.error = (f"the {self.name} sandbox failed to start"
                            + (f": {tail}" if tail else "") + "; run `detain doctor`")
            return
        seen = hello.get("assurance", {}) if hello else {}
        result.assurance = self._assurance(ctx, seen if isinstance(seen, dict) else {})
        if ctx.cgroup is not None:
            # The kernel's own count for the sandbox. Not the max with ru_maxrss: a sandbox
            # process forked from detain (the warden's fork) carries detain's pre-exec
            # high-water mark, which is detain's size, not the job's.
            result.peak_memory_bytes = ctx.cgroup.peak_memory() or result.peak_memory_bytes
            result.cpu_seconds = round(max(result.cpu_seconds, ctx.cgroup.cpu_seconds()), 4)
            if ctx.cgroup.pids_refusals():
                result.notes.append(f"process limit reached: {ctx.cgroup.pids_refusals()} "
                                    "fork(s) refused (kernel)")
        result.notes += ctx.notes
        if ctx.deps:  # otherwise a deps record can only be one the job forged
            self._deps_outcome(result, outcome.records)
        result.behaviour = collect_events(outcome.records, outcome.channel_bytes)
        if outcome.timed_out:
            return
        if ctx.cgroup is not None and ctx.cgroup.oom_kills():
            result.limit = "memory"
            result.notes.append("memory limit hit: the kernel's OOM killer ended the job")
        elif "AS=" in ctx.rlimits and result.exit_code not in (0, None) and any(
                r.get("type") == "exit" and r.get("memory_error") is True
                for r in outcome.records):
            # Only where RLIMIT_AS *is* the memory limit (no cgroup to ask), and only for a
            # job that failed: the record is the job's word, so it may not turn a clean run
            # or a cgroup-limited one into a limit hit.
            result.limit = "memory"
            result.notes.append("memory limit hit: MemoryError under RLIMIT_AS (reported from "
                                "inside the sandbox, in-process)")
        elif result.signal == signal.SIGXCPU or (
                result.signal == signal.SIGKILL and result.cpu_seconds >= limits.cpu_seconds):
            result.limit = "cpu"
            result.notes.append("CPU time limit hit (RLIMIT_CPU)")
        inside = cpu_counted_inside(outcome.records, result.wall_seconds)
        if inside is not None and inside > result.cpu_seconds:  # the host missed the job
            result.notes.append(f"cpu: {inside} s as counted inside the sandbox (in-process, "
                                f"unverified); the host saw {result.cpu_seconds} s, not the "
                                "job's processes")
            result.cpu_seconds = inside

    signal_as_exit_status = False  # True where the sandbox reports a signal as 128+N

    @staticmethod
    def _deps_outcome(result: Result, records: list[dict]) -> None:
        """The install phase's record (sent before the job ran, so not forgeable by it)."""
        record = next((r for r in records if r.get("type") == "deps"), None)
        if record is None:
            return
        if record.get("ok") is True:
            count, ms = record.get("installed"), record.get("ms")
            if isinstance(ms, int) and not isinstance(ms, bool):
                result.install_seconds = ms / 1000
            result.notes.append(
                "requirements installed inside the sandbox into a throw-away venv ("
                f"{count if isinstance(count, int) else '?'} package(s), "
                f"{ms if isinstance(ms, int) else '?'} ms of the job's time)")
        else:
            detail = str(record.get("error", "unknown error"))[-500:].strip()
            result.error = ("could not install the job's requirements inside the sandbox: "
                            + " ".join(detail.split()))

    def _assurance(self, ctx: RunContext, seen: dict[str, Any]) -> dict[str, Any]:
        status = seen.get("status") if isinstance(seen.get("status"), dict) else {}
        inner_ns = seen.get("namespaces") if isinstance(seen.get("namespaces"), dict) else {}
        entered = []
        for name, link in inner_ns.items():
            try:
                if link and link != os.readlink(f"/proc/self/ns/{name}"):
                    entered.append(name)
            except OSError:
                continue
        cap_eff = str(status.get("CapEff", ""))
        assurance = {
            "observed_from": "inside the sandbox, before the job ran",
            "uid": seen.get("uid"), "gid": seen.get("gid"),
            "host_uid": ctx.uid if ctx.uid is not None else os.geteuid(),
            "namespaces": sorted(entered),
            "seccomp": status.get("Seccomp") == "2",
            "seccomp_filters": _int(status.get("Seccomp_filters")),
            "no_new_privs": status.get("NoNewPrivs") == "1",
            "capabilities": "none" if cap_eff and set(cap_eff) <= {"0"} else cap_eff,
            "network_interfaces": seen.get("interfaces"),
            "environment": seen.get("environ_keys"),
            "rlimits": seen.get("rlimits"),
            "cgroup": ({"version": ctx.cgroup.version, **ctx.cgroup.applied}
                       if ctx.cgroup is not None else None),
            "scratch_disk_cap": "tmpfs (all files)" if self.scratch_capped(ctx)
                                else "per file (RLIMIT_FSIZE); all files watched by the host",
            "limits": totals.statement(ctx.policy.limits, ctx.cgroup, self.scratch_capped(ctx),
                                       inside=self.own_limits),
            "interpreter": {"path": ctx.interpreter.executable,
                            "version": ctx.interpreter.version,
                            "flags": list(ctx.policy.interpreter_flags)},
        }
        assurance.update(self.host_assurance(ctx, seen))
        if "zygote" in ctx.extra:
            assurance["zygote"] = ctx.extra["zygote"]
        return assurance


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
