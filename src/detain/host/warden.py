"""A per-run warden: the run ends on its wall clock, or when detain dies, whatever the job did.

Two gaps it closes. Without a pid namespace or a cgroup (process and landlock backends run
unprivileged) nothing on the host knew a job's orphans: a `setsid()` double-fork daemon
was reparented to init and outlived the run. And every sandbox's end depended on detain
staying alive: SIGKILL detain (a cancelled CI job) and a container, or a root landlock
job, ran on with no wall clock until some later detain start swept it.

The warden is a small process of its own (host/warden_main.py), outside the sandbox (as
root it keeps root while the job runs as the run's fresh uid; unprivileged, Landlock's
signal scoping keeps the job from signalling it), in its own session, started from a
fresh interpreter that imports almost nothing. detain holds the write end of a control
pipe to it:
  * `go SECONDS` when the job starts: the warden ends the run at SECONDS + GRACE, so a
    stopped or hung detain (Ctrl-Z on `detain run`) cannot extend it;
  * `kill`: end the run now (detain's own kill, which must not orphan anything);
  * `done`: the run is over, nothing left to do;
  * end of file without `done`: detain died. The warden ends the run at once and removes
    what it left (the run dir's journal, as the startup sweep would), so no later detain
    start is needed.

Two modes:
  * `reap` (host-process backends): the warden is the sandbox process's parent and a
    child subreaper (PR_SET_CHILD_SUBREAPER), so every orphan of the job becomes its
    child; when the job's main process ends it kills and reaps every descendant, then
    exits with the job's own status (a signal re-raised on itself), so the caller sees
    the job's exit and rusage as before. It is made in the sandbox process's fork-exec
    step: that process forks, the child goes on to become the sandbox, the parent execs
    the warden. detain's own process never becomes a subreaper, so a library user's or
    `detain serve`'s other children are reaped as before.
  * `watch` (every other backend): the warden only watches; ending the run means SIGKILL
    to the sandbox process (bwrap and QEMU die with it) and, for a container, the
    engine's own removal of it (the command the run's journal holds).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .privileges import _check, _libc, load_libc

GRACE = 5.0  # past the wall clock: detain's own kill and drain come first
END_SECONDS = 10.0
PR_SET_CHILD_SUBREAPER = 36
BOOT = ("import sys; sys.path[:0] = [sys.argv[1]]; "
        "from detain.host.warden_main import main; main()")
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class Warden:
    """The host's side of one run's warden: how to start it, and the control pipe."""

    def __init__(self, mode: str, run_dir: Path, stop: Sequence[str] = (),
                 stop_env: dict[str, str] | None = None) -> None:
        if mode not in ("reap", "watch"):
            raise ValueError(mode)
        self.mode = mode
        self._read, self._write = os.pipe()
        self._watcher: subprocess.Popen | None = None
        # Built here: the fork-exec step should neither import nor allocate much.
        self._head = [sys.executable, "-I", "-S", "-c", BOOT, SOURCE_ROOT, mode, str(run_dir),
                      str(self._read)]
        self._tail = [str(GRACE), json.dumps(dict(stop_env or {})), *stop]
        if mode == "reap":
            load_libc()

    def _argv(self, child: int) -> list[str]:
        return [*self._head, str(child), *self._tail]

    def preexec(self, inner: Callable[[], None] | None) -> Callable[[], None] | None:
        """The sandbox process's fork-exec step, wrapped so that (reap mode) the process
        started becomes the warden and its child, after `inner`, the sandbox."""
        if self.mode != "reap":
            return inner

        def step() -> None:
            _check(_libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
            child = os.fork()
            if child == 0:
                if inner is not None:
                    inner()
                return
            os.set_inheritable(self._read, True)
            os.execve(sys.executable, self._argv(child), {})
        return step

    def started(self, proc: subprocess.Popen) -> None:
        """Once the sandbox process exists: the read end is the warden's alone.

        A watching warden gets the sandbox process as a pidfd opened here, while it is
        certainly detain's unreaped child, never as a pid to open itself: the warden's
        interpreter may start after the sandbox ended and was reaped, its pid reused,
        and the kill it sends on the wall clock or detain's death must not reach another
        process (another run's)."""
        if self.mode == "watch":
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:  # no pidfd on this kernel: the warden ends the run without it
                pidfd = -1
            try:
                self._watcher = subprocess.Popen(
                    self._argv(pidfd), env={},
                    pass_fds=(self._read,) if pidfd < 0 else (self._read, pidfd),
                    start_new_session=True, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            finally:
                if pidfd >= 0:
                    os.close(pidfd)
        os.close(self._read)
        self._read = -1

    def arm(self, seconds: float) -> None:
        """The job starts now: the warden ends it at `seconds` + GRACE at the latest."""
        self._send(f"go {seconds}\n")

    def end(self, proc: subprocess.Popen, wait: float = END_SECONDS) -> None:
        """Reap mode: have the warden kill every process of the run and exit; waits for
        that (not reaping it, its status is the job's) up to `wait` seconds."""
        if self.mode != "reap" or proc.returncode is not None or not self._send("kill\n"):
            return
        _await_exit(proc.pid, wait)

    def done(self) -> None:
        """The run is over and everything of it ended: the warden has nothing left to do."""
        if self._write < 0:
            return
        self._send("done\n")
        os.close(self._write)
        self._write = -1
        if self._read >= 0:
            os.close(self._read)
            self._read = -1
        if self._watcher is not None and self._watcher.returncode is None:
            if not _await_exit(self._watcher.pid, END_SECONDS):  # no pidfd: poll for it
                try:
                    self._watcher.wait(timeout=END_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            self._watcher.poll()  # reaped once it is gone

    def _send(self, line: str) -> bool:
        if self._write < 0:
            return False
        try:
            os.write(self._write, line.encode())
        except OSError:
            return False
        return True


def _await_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for child `pid` to exit (not reaping it), woken the
    moment it does; False when no pidfd could be had. Popen.wait(timeout) polls instead,
    sleeping up to 50 ms between looks: about 10 ms late, on every run, for a warden
    that exits as soon as it reads `done`."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(pidfd, selectors.EVENT_READ)
            sel.select(timeout)
    finally:
        os.close(pidfd)
    return True
