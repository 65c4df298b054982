"""The warden process itself (host/warden.py says why it exists and what it does).

It starts for every run, beside the job, so it imports next to nothing (os, sys, select:
built into the interpreter); what only some ends need (the engine's stop command, the
journal's sweep, re-raising a signal) is imported there.

Arguments: SOURCE_ROOT MODE RUN_DIR CONTROL_FD CHILD GRACE STOP_ENV_JSON [STOP_ARGV...].
CHILD is the sandbox process: reap mode, the pid of the warden's own child; watch mode, an
inherited pidfd for detain's child (-1: none), which a pid could not name safely.
"""

from __future__ import annotations

import os
import select
import sys
import time

SIGKILL = 9
STOP_TIMEOUT = 60


def main() -> None:
    mode, run_dir, control, child, grace = sys.argv[2:7]
    stop = sys.argv[8:]
    _detach(int(control), int(child) if mode == "watch" else -1)
    state = _Control(int(control), run_dir, float(grace))
    if mode == "reap":
        _Reaper(state, int(child)).run()
    else:
        _Watcher(state, int(child), stop, sys.argv[7]).run()


def _detach(control: int, pidfd: int) -> None:
    """Keep only the control pipe (and the sandbox's pidfd): the sandbox's pipes and the
    channel must see EOF when the sandbox ends, not when the warden does."""
    start = 3
    for keep in sorted(fd for fd in (control, pidfd) if fd >= 3):
        os.closerange(start, keep)
        start = keep + 1
    os.closerange(start, 0x7FFFFFFF)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


class _Control:
    """The control pipe's state and the wall clock it arms."""

    def __init__(self, fd: int, run_dir: str, grace: float) -> None:
        self.fd, self.run_dir, self.grace = fd, run_dir, grace
        self.deadline: float | None = None
        self.done = self.eof = self.kill = False
        self._partial = b""

    def timeout_ms(self) -> int | None:
        if self.deadline is None:
            return None
        return max(0, int((self.deadline - time.monotonic()) * 1000) + 1)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def read(self) -> None:
        chunk = os.read(self.fd, 4096)
        if not chunk:
            self.eof = True
            return
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            word, _, value = line.decode("ascii", "replace").partition(" ")
            if word == "go":
                self.deadline = time.monotonic() + float(value) + self.grace
            elif word == "kill":
                self.kill = True
            elif word == "done":
                self.done = True

    def orphaned(self) -> bool:
        """detain died: its end of the pipe closed without `done`."""
        return self.eof and not self.done

    def sweep(self) -> None:
        """Remove what the dead detain left of this run (and of any other dead run: the
        same sweep a detain start does), through the run dir's journal."""
        os.environ["DETAIN_STATE_DIR"] = os.path.dirname(self.run_dir)
        from detain.host import rundir

        rundir.sweep()


class _Reaper:
    """Reap mode: parent and child subreaper of the sandbox process."""

    def __init__(self, control: _Control, child: int) -> None:
        self.control = control
        self.child = child
        self.status: int | None = None

    def run(self) -> None:
        control = self.control
        pidfd = os.pidfd_open(self.child)
        poll = select.poll()
        poll.register(pidfd, select.POLLIN)
        poll.register(control.fd, select.POLLIN)
        while True:
            ready = [fd for fd, _ in poll.poll(control.timeout_ms())]
            if control.fd in ready:
                control.read()
                if control.eof:
                    poll.unregister(control.fd)
            if pidfd in ready or control.kill or control.orphaned() or control.expired():
                break
        self.end_all()
        if control.orphaned():
            control.sweep()
        _exit_as(self.status)

    def end_all(self) -> None:
        """SIGKILL every descendant and reap them, until none is left (new ones forked
        meanwhile are found on the next round; each round kills all it sees). The pause
        between rounds grows, so a process stuck in the kernel costs no CPU meanwhile."""
        pause = 0.0005
        while True:
            for pid in _descendants(os.getpid()):
                try:
                    os.kill(pid, SIGKILL)
                except OSError:
                    pass
            if not self._reap():
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _reap(self) -> bool:
        """Reap every dead child; False once no child is left at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.child:
                self.status = status


class _Watcher:
    """Watch mode: ends a run through its sandbox process and the engine's stop command."""

    def __init__(self, control: _Control, client: int, stop: list[str], stop_env: str) -> None:
        self.control = control
        self.stop, self.stop_env = stop, stop_env
        self.client: int | None = client if client >= 0 else None  # a pidfd (main's doc)

    def run(self) -> None:
        control = self.control
        poll = select.poll()
        poll.register(control.fd, select.POLLIN)
        while not control.done and not control.eof:
            if control.expired():
                self.end()
                control.deadline = None
            if poll.poll(control.timeout_ms()):
                control.read()
        if control.orphaned():
            self.end()
            control.sweep()

    def end(self) -> None:
        import signal

        if self.client is not None:
            try:
                signal.pidfd_send_signal(self.client, signal.SIGKILL)
            except OSError:
                pass
        if self.stop:
            import json
            import subprocess

            try:
                subprocess.run(self.stop, env=json.loads(self.stop_env),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=STOP_TIMEOUT, check=False)
            except (OSError, subprocess.SubprocessError):
                pass


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as handle:
                found += [int(p) for p in handle.read().split()]
        except (OSError, ValueError):
            continue
    return found


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (iteratively: a job controls how deep its tree is)."""
    found: list[int] = []
    pending = _children(pid)
    while pending:
        current = pending.pop()
        found.append(current)
        pending += _children(current)
    return found


def _exit_as(status: int | None) -> None:
    """Exit with the job's wait status: its code, or the same signal re-raised (not
    dumpable first, so a core-dumping signal leaves no core file of the warden)."""
    if status is None:
        os._exit(255)
    if not os.WIFSIGNALED(status):
        os._exit(os.waitstatus_to_exitcode(status))
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
