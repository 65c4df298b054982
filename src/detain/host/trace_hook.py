"""The outside tracer (host/tracer.py) on a container an engine starts: joined by an OCI hook.

No step of detain's runs in a container's processes between fork and exec (the engine,
conmon and runc make them), so the tracer cannot be joined as on bwrap. Instead:
  * the container's seccomp profile (host/seccomp_oci.py) returns SCMP_ACT_TRACE for the
    traced syscalls. runc loads it just before it execs the container's command; with no
    tracer attached such a syscall fails with ENOSYS, so the job cannot run untraced;
  * a per-run `createRuntime` hook (podman `--hooks-dir`, the run's own dir) runs on the
    host as root while runc's init process waits, before it has loaded that profile or
    exec'd anything (the flag replaces the system's hook dirs for the run, so no other
    hook runs there). runc hands the hook the container's state (its init's host pid) on
    stdin; the hook passes the pid to the tracer through a FIFO in the run dir and waits
    until the tracer has seized it (PTRACE_SEIZE, EXITKILL). If the tracer cannot, the
    hook fails and runc refuses to start the container.
From the seize on, every process and thread of the container is followed. runc's init
execs the command, `/usr/bin/env` (engine.py's wrap), which execs the launcher: env is
the machinery (its exec is not the job's), so podman, conmon and runc themselves are
never traced and runc's init is not the job's until the launcher runs.

Chosen over tracing `podman run`'s whole process tree (and filtering to the container's
pid namespace): podman and conmon are multi-threaded Go/C daemons whose every fork and
clone would stop in the tracer, and conmon double-forks away from podman; the hook needs
one short process per run. The FIFOs are in the run dir (root's, 0700), which no
container mounts: the job, an unprivileged uid inside the container's own pid namespace,
can neither write a pid to them nor see the tracer, and its seccomp profile denies ptrace.

Rootless engines cannot be traced so: the tracer would be the caller's uid outside the
container's user namespace. Docker cannot either: dockerd (through containerd) starts
the container and takes no per-run hook from its client, so no tracer can seize the
container before it execs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .tracer import OutsideTrace

HOOK_TIMEOUT = 30  # seconds runc waits for the hook before it fails the container
# The hook, run by runc as root with the container's state on stdin: the go FIFO is
# opened first (the tracer holds it open for writing), so the tracer's answer cannot be
# written before anyone reads it; EOF without "1" means the seize failed.
HOOK = """import json, os, sys
state = json.loads(sys.stdin.buffer.read(1 << 20))
pid = state.get("pid")
if not isinstance(pid, int) or pid <= 0:
    sys.exit(1)
go = os.open(sys.argv[2], os.O_RDONLY | os.O_NONBLOCK)
os.set_blocking(go, True)
request = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)
os.write(request, b"%d\\n" % pid)
os.close(request)
sys.exit(0 if os.read(go, 1) == b"1" else 1)
"""


class HookedTrace(OutsideTrace):
    """The tracer of one container run, handed its first tracee by an OCI hook whose
    config it writes into `hook_dir` (a name in the run dir, the engine's --hooks-dir)."""

    def __init__(self, run_dir: Path, machinery: str | None, hook_dir: str) -> None:
        self.hook_dir = run_dir / hook_dir
        super().__init__(run_dir, machinery)

    def _handshake(self, run_dir: Path) -> tuple[int, int]:
        """FIFOs in the run dir in place of pipes, and the hook's config in its own dir.
        detain keeps the request FIFO open for writing until the run is over: a container
        that never started leaves the tracer an EOF, not a wait."""
        hooks = self.hook_dir
        hooks.mkdir(mode=0o700)
        request, go = run_dir / "trace-request", run_dir / "trace-go"
        os.mkfifo(request, 0o600)
        os.mkfifo(go, 0o600)
        request_read = os.open(request, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(request_read, True)
        self._request = os.open(request, os.O_WRONLY | os.O_CLOEXEC)
        self._go = -1
        go_write = os.open(go, os.O_RDWR | os.O_CLOEXEC)  # never blocks, even unread
        config = {"version": "1.0.0", "stages": ["createRuntime"], "when": {"always": True},
                  "hook": {"path": sys.executable,
                           "args": [sys.executable, "-I", "-S", "-c", HOOK, str(request),
                                    str(go)],
                           "env": [], "timeout": HOOK_TIMEOUT}}
        (hooks / "detain-trace.json").write_text(json.dumps(config))
        return request_read, go_write

    def started(self) -> None:
        """Nothing to hand over: the hook opens the FIFOs by path, whenever runc runs it."""
