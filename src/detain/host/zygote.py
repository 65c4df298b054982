"""The host's side of a warm Sandbox's zygote (guest/zygote.py says what one is).

A zygote serves one Sandbox, so one policy: its interpreter, flags, mounts and confinement
mode are fixed when it starts. Each run is still prepared here as any other (run dir,
fresh uid, cgroup, pipes, job dir; `Backend.start` with a `forker`) and only its sandbox
process is made differently: the zygote clones it, as detain's own child, and it confines
itself before it reads the job. Supervising, limits, the result and cleanup are the
backend's, unchanged.

Policies the zygote does not cover start their sandbox the usual way (`mode_for` says
which): network allow-lists and the sinkhole (a proxy or namespace set up per run),
--trace (a tracer that must seize the process before it execs), requirements, copy-out
(scratch is the run's own tmpfs, which the host cannot read after it), an interpreter
or mount under a dir the run mounts afresh (/tmp), and bwrap without root (a user
namespace per run would need the zygote inside one of its own).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DetainError
from ..guest import LAUNCHER
from ..paths import state_dir
from ..policy import SCRATCH, Policy
from . import privileges, rundir, seccomp
from .interpreter import find_interpreter

if TYPE_CHECKING:
    from ..backends.base import Backend, RunContext, Started

ZYGOTE = LAUNCHER.parent / "zygote.py"
LIST, ITEM = "\x1e", "\x1f"  # as guest/zygote.py splits them
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
             ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
             ("pts/ptmx", "/dev/ptmx"), ("/proc/kcore", "/dev/core"))
REMOUNTED = ("/tmp", "/dev/shm", SCRATCH)  # each run mounts a fresh tmpfs there
START_SECONDS = 30.0
PIPE_BYTES = 1 << 20  # a run's stdout and stderr pipes (the kernel's default is 64 KiB)
LABEL_ROOM = 128  # as guest/zygote.py writes a run's label over it


def mode_for(backend: Backend, policy: Policy) -> str | None:
    """The zygote mode ("ns" for bwrap, "landlock") that serves `policy`, or None."""
    if os.environ.get("DETAIN_NO_ZYGOTE") or backend.name not in ("bwrap", "landlock"):
        return None
    if (policy.allow_hosts or policy.sinkhole or policy.trace or policy.copy_out
            or policy.wants_packages):
        return None
    if backend.name == "landlock":
        return None if policy.mounts else "landlock"
    if not privileges.is_root():
        return None
    interp = find_interpreter(policy.python)
    inside = [*interp.bind_dirs, *(m.sandbox for m in policy.mounts)]
    if any(p == d or p.startswith(d + "/") for p in inside for d in REMOUNTED):
        return None
    return "ns"


class Zygote:
    """One zygote process and its control socket; `fork` is safe from any thread.

    It must be started on a thread that outlives it and its runs: they get their
    parent-death signal when that thread ends (api.py's spawner)."""

    def __init__(self, backend: Backend, policy: Policy, mode: str) -> None:
        self.backend, self.policy, self.mode = backend, policy, mode
        self._lock = threading.Lock()
        rundir.sweep()  # once here: its runs skip the sweep every other run does
        self.run = rundir.RunDir("zygote")  # the template root and the zygote's own log
        self.proc: subprocess.Popen | None = None
        self.described: dict[str, object] = {}  # what a run's assurance says of it
        self.job_dir = ""  # the run's job dir as it sees it, when not the host's path
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from ..backends.base import GUEST_PATH

        interp = find_interpreter(self.policy.python)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        log = os.open(self.run.path / "zygote.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                      0o600)
        privileges.load_libc()
        try:
            self.proc = subprocess.Popen(
                [interp.executable, *self.policy.interpreter_flags, str(ZYGOTE),
                 str(theirs.fileno()), " " * (LABEL_ROOM - 1)], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True, env={"PATH": GUEST_PATH, "LANG": "C.UTF-8"}, cwd="/",
                preexec_fn=privileges.die_with_parent)
        finally:
            theirs.close()
            os.close(log)
        config = self._config(interp)
        self.described["zygote"] = (f"forked by the Sandbox's zygote (pid {self.proc.pid}), "
                                    "confined by itself before it read its job")
        self.sock.send("\0".join(f"{k}={v}" for k, v in config.items()).encode())

    def _config(self, interp) -> dict[str, str]:
        policy = self.policy
        bpf = seccomp.filter_path(host_namespaces=self.mode == "landlock")
        config = {"mode": self.mode, "seccomp": str(bpf)}
        if self.mode == "ns":
            from ..backends import bwrap

            root = self.run.subdir("root", 0o755)
            self.job_dir = bwrap.GUEST_JOB
            config.update(root=str(root), launcher=bwrap.GUEST_LAUNCHER, job=bwrap.GUEST_JOB,
                          scratch=SCRATCH, masked=LIST.join(bwrap.MASKED_PROC),
                          layout=LIST.join(ITEM.join(op) for op in ns_layout(policy, interp)))
        else:
            config.update(launcher=str(LAUNCHER), **landlock_config(interp, self.described))
        return config

    def fork(self, ctx: RunContext, started: Started) -> ForkedProcess:
        """Have the zygote clone this run's sandbox process (Backend.start's `forker`)."""
        pipes = [os.pipe() for _ in range(3)]
        for _, write_end in pipes[1:]:  # fewer wake-ups relaying a job's output
            try:
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size for an ordinary user: the default
        ours = [pipes[0][1], pipes[1][0], pipes[2][0]]  # stdin's write end, output's read
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        try:
            # One cgroup v2 group: the run is cloned into it (CLONE_INTO_CGROUP). Moving a
            # process between groups afterwards waits for an RCU grace period, ~10 ms.
            into = ctx.cgroup is not None and ctx.cgroup.version == 2
            if into:
                theirs.append(os.open(ctx.cgroup.dirs["unified"], os.O_RDONLY
                                      | os.O_DIRECTORY | os.O_CLOEXEC))
            elif ctx.cgroup is not None:  # v1: only the groups that hold a limit
                theirs += [os.open(p, os.O_WRONLY | os.O_CLOEXEC)
                           for p in ctx.setup.cgroup_procs]
            request = ["fork", "" if ctx.uid is None else str(ctx.uid), str(ctx.run.path),
                       str(self.policy.limits.disk_bytes), ctx.label or "",
                       "into" if into else "procs"]
            # The run's fds in the order it expects: stdin, stdout, stderr, the channel's
            # write end, the job's read end (started.child_fds), then its cgroup.procs.
            fds = [*theirs[:3], *started.child_fds, *theirs[3:]]
            with self._lock:
                socket.send_fds(self.sock, ["\0".join(request).encode()], fds)
                reply = self.sock.recv(4096).decode(errors="replace")
            if not reply.startswith("ok "):
                raise DetainError(f"the zygote could not start the run: "
                                  f"{reply[6:] or self._log()}; set DETAIN_NO_ZYGOTE=1 to "
                                  "start every run on its own")
            proc = ForkedProcess(int(reply[3:]), ours, self)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        ctx.extra.update(self.described)
        if ctx.cgroup is not None:
            # Every process of the run is in its cgroup (it joins before anything else),
            # which cleanup kills and empties: the uid's /proc scan would find nothing.
            ctx.run.covered("uid")
        # Where the run finds its job dir and channel (guest/zygote.py's fd 3).
        ctx.guest_paths = (self.job_dir or str(ctx.job_dir), "3")
        return proc

    def send(self, text: str) -> None:
        try:
            self.sock.send(text.encode())
        except OSError:
            pass  # the zygote is gone: its runs got their parent's death signal

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log(self) -> str:
        try:
            return (self.run.path / "zygote.log").read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "it exited"

    def close(self) -> None:
        """Stop the zygote (it kills any run it still watches) and remove its dir."""
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=START_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.run.close()


class ForkedProcess:
    """A run's sandbox process cloned by the zygote as detain's own child: what
    `supervise` and `discard` use of a Popen, and the warden's part, which the zygote
    plays (`arm`, `done`; `end` kills what a landlock run's reaper holds)."""

    def __init__(self, pid: int, fds: list[int], zygote: Zygote) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = open(fds[0], "wb")  # closed by supervise or discard
        self.stdout = open(fds[1], "rb")
        self.stderr = open(fds[2], "rb")
        self.warden = self
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def arm(self, seconds: float) -> None:
        from .warden import GRACE

        self._zygote.send(f"go\0{self.pid}\0{seconds + GRACE}")

    def done(self) -> None:
        self._zygote.send(f"done\0{self.pid}")

    def end(self, proc: object) -> None:
        """Kill every process the run's reaper holds before the reaper itself goes, so no
        orphan of the job passes to the host's init."""
        if self.returncode is not None:
            return
        from .warden_main import _descendants

        for _ in range(100):
            found = _descendants(self.pid)
            if not found:
                return
            for pid in found:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass


def ns_layout(policy: Policy, interp) -> list[tuple[str, ...]]:
    """The sandbox's root as bwrap makes it (backends/bwrap.py), as the zygote's steps:
    (dir|devtmpfs, PATH), (symlink|file, TARGET|TEXT, PATH), (ro|rw, SOURCE, PATH)."""
    from ..backends import bwrap

    ops: list[tuple[str, ...]] = [("ro", "/usr", "/usr")]
    ops += bwrap.root_dirs()
    ops += [("ro", f"/etc/{n}", f"/etc/{n}") for n in bwrap.ETC_FILES
            if os.path.exists(f"/etc/{n}")]
    ops += [("file", bwrap.PASSWD, "/etc/passwd"), ("file", bwrap.GROUP, "/etc/group"),
            ("file", "detain\n", "/etc/hostname"), ("dir", "/proc"), ("devtmpfs", "/dev")]
    ops += [("rw", f"/dev/{n}", f"/dev/{n}") for n in DEVICES if os.path.exists(f"/dev/{n}")]
    ops += [("symlink", target, path) for target, path in DEV_LINKS]
    ops += [("dir", "/dev/pts"), ("dir", "/dev/shm"), ("dir", "/tmp"), ("dir", SCRATCH)]
    ops += [("ro", d, d) for d in interp.bind_dirs]
    ops += [("ro", str(LAUNCHER.parent), bwrap.GUEST_DIR), ("dir", bwrap.GUEST_JOB)]
    ops += [("rw" if m.writable else "ro", str(m.host), m.sandbox) for m in policy.mounts]
    ops.append(("ro", state_dir(), "/.state"))
    return ops


def landlock_config(interp, described: dict[str, object]) -> dict[str, str]:
    """The zygote's Landlock rules but a run's own scratch and job dir, as numbers;
    `described` gets what a run's assurance shows of them."""
    from ..backends.landlock import granted_paths
    from . import landlock

    read_exec, read_only = granted_paths(interp)
    rights = landlock.plan(read_exec, read_only, [])
    granted: dict[str, list[str]] = {}
    for kind, path, _ in rights.rules:
        if os.path.exists(path):
            granted.setdefault(kind, []).append(path)
    granted["writable"] = ["the run's scratch dir"]
    granted["read_only"].append("the run's job dir")
    described["landlock"] = {
        "abi": rights.abi, "enforced_before_exec": False, "enforced_before_the_job": True,
        "handled_fs": landlock.names(rights.handled_fs),
        "handled_net": landlock.names(rights.handled_net) or None,
        "scoped": landlock.names(rights.scoped) or None, **granted}
    config = {"ll_handled": f"{int(rights.handled_fs)},{int(rights.handled_net)},"
                            f"{int(rights.scoped)}",
              "ll_rules": LIST.join(f"{path}{ITEM}{int(allowed)}"
                                    for _, path, allowed in rights.rules),
              "ll_scratch": str(int(rights.writable)), "ll_job": str(int(rights.read)),
              "ll_proc_self": str(int(rights.read) & int(rights.file_rights)),
              "ll_file_rights": str(int(rights.file_rights))}
    if privileges.is_root():
        config["reveal"] = LIST.join(ITEM.join(group) for group in _unreachable(
            [*interp.bind_dirs, str(LAUNCHER.parent)]))
    return config


def _unreachable(paths: list[str]) -> list[tuple[str, ...]]:
    """Dirs the run's uid cannot reach, grouped under the topmost closed ancestor of each
    (which the zygote covers with an empty tmpfs, binding them back)."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        if privileges.reachable_by_others(Path(path)):
            continue
        closed = next(str(p) for p in [*reversed(Path(path).parents), Path(path)]
                      if not privileges.reachable_by_others(p))
        if state_dir().startswith(closed + "/") or closed == "/":
            raise DetainError(f"{path} is not reachable by the run's uid and its closed "
                              f"ancestor {closed} holds detain's state dir")
        groups.setdefault(closed, []).append(path)
    return [(closed, *inner) for closed, inner in groups.items()]
