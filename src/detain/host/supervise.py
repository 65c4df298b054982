"""Start the sandbox process, pass its output through under a cap, enforce the wall clock.

Everything read here comes from hostile code: output is capped per stream (and drained
past the cap so the job cannot stall on a full pipe), channel records are size-capped and
parsed defensively, and the run ends when the *main* process exits even if some escaped
descendant keeps a pipe open.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .warden import Warden

CHANNEL_CAP = 4 << 20  # guest/audit.py keeps its events under 3 MiB
RECORD_CAP = 64 << 10
DRAIN_SECONDS = 0.5
Sink = Callable[[bytes], None]


@dataclass
class Capture:
    """One output stream: kept up to `cap` bytes, counted beyond it."""

    name: str
    cap: int
    sink: Sink | None = None
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def feed(self, chunk: bytes) -> None:
        room = self.cap - self.total
        self.total += len(chunk)
        if room > 0:
            self._emit(chunk[:room])
        if self.total > self.cap and room >= 0:
            self._emit(f"\n[detain: {self.name} truncated after {self.cap} bytes]\n".encode())

    def _emit(self, data: bytes) -> None:
        self.data += data
        if self.sink is not None:
            self.sink(data)


@dataclass
class Outcome:
    returncode: int | None
    rusage: object | None
    timed_out: bool
    stdout: Capture
    stderr: Capture
    records: list[dict]
    channel_bytes: int
    started: float
    ended: float


def _feed_stdin(pipe, stdin: bytes | int) -> None:
    try:
        if isinstance(stdin, bytes):
            pipe.write(stdin)
        else:
            while chunk := os.read(stdin, 65536):
                pipe.write(chunk)
                pipe.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            pipe.close()
        except (BrokenPipeError, OSError):
            pass


def spawn(argv: Sequence[str], *, env: dict[str, str], cwd: str | None = None,
          preexec: Callable[[], None] | None = None, pass_fds: Sequence[int] = (),
          close_after_start: list[int] | None = None,
          warden: Warden | None = None) -> subprocess.Popen:
    """Start the sandbox process, its stdin a pipe `supervise` feeds (or closes) later.

    `close_after_start` holds fds only the child needs (the channel's write end): they are
    closed, and removed from the list, as soon as the child exists, so EOF can arrive.
    With a `warden` (host/warden.py), the process started is the warden in reap mode, or
    is watched by one; it is kept as `proc.warden`, armed and released by `supervise`.
    """
    if warden is not None:
        preexec = warden.preexec(preexec)
    try:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, preexec_fn=preexec, pass_fds=tuple(pass_fds),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True)
    except BaseException:
        if warden is not None:
            warden.done()
        raise
    proc.warden = warden
    if warden is not None:
        try:
            warden.started(proc)
        except BaseException:
            kill_group(proc)
            proc.wait()
            warden.done()
            raise
    while close_after_start:
        os.close(close_after_start.pop())
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox process's group (it was started in a session of its own), only
    while the process is unreaped: a reaped pid may be another process's group by now."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _release_warden(proc: subprocess.Popen) -> None:
    warden = getattr(proc, "warden", None)
    if warden is not None:
        warden.done()


def supervise(proc: subprocess.Popen, *, timeout: float, stdout: Capture, stderr: Capture,
              stdin: bytes | int | None = None, channel: int | None = None,
              kill: Callable[[subprocess.Popen], None],
              extra: Sequence[tuple[int, Sink]] = (), cancel: int | None = None) -> Outcome:
    """Run `proc` to completion or to its deadline; `kill` must end the whole sandbox.

    The wall clock starts here, not at `spawn`: a sandbox started ahead (a warm spare)
    waits for its job without spending the job's time. `extra` are more (fd, sink) streams
    to read and drain like stdout/stderr (a VM's ports). `cancel` is an fd whose readiness
    (a client that hung up) ends the run like a timeout, without the timeout's status.
    The run's warden is armed with the same clock, so a stopped detain cannot stretch it.
    """
    started = time.monotonic()
    if getattr(proc, "warden", None) is not None:
        proc.warden.arm(timeout)
    if stdin is None:
        proc.stdin.close()
        feeder = None
    else:
        feeder = threading.Thread(target=_feed_stdin, args=(proc.stdin, stdin), daemon=True)
        feeder.start()
    records: list[dict] = []
    channel_state = {"bytes": 0, "partial": b""}
    deadline = started + timeout
    timed_out = False
    returncode = rusage = None
    pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, stdout.feed)
    sel.register(proc.stderr, selectors.EVENT_READ, stderr.feed)
    if channel is not None:
        sel.register(channel, selectors.EVENT_READ,
                     lambda chunk: _channel_feed(chunk, channel_state, records))
    for fd, sink in extra:
        sel.register(fd, selectors.EVENT_READ, sink)
    sel.register(pidfd, selectors.EVENT_READ, None)
    if cancel is not None:
        sel.register(cancel, selectors.EVENT_READ, _CANCEL)
    try:
        while returncode is None:
            remaining = deadline - time.monotonic()
            stop = remaining <= 0
            for key, _ in () if stop else sel.select(remaining):
                if key.data is None:
                    # Its process group first, while the unreaped main process still holds
                    # the group's id: killed after the reap, the id could be reused.
                    kill_group(proc)
                    _, status, rusage = os.wait4(proc.pid, 0)
                    returncode = os.waitstatus_to_exitcode(status)
                    break
                if key.data is _CANCEL:
                    stop = True
                    break
                _pump(sel, key)
            if stop and returncode is None:
                timed_out = remaining <= 0
                kill(proc)
                _, status, rusage = os.wait4(proc.pid, 0)
                returncode = os.waitstatus_to_exitcode(status)
        proc.returncode = returncode
        ended = time.monotonic()
        kill(proc)
        sel.unregister(pidfd)
        if cancel is not None:
            sel.unregister(cancel)
        drain_until = time.monotonic() + DRAIN_SECONDS
        while sel.get_map() and time.monotonic() < drain_until:
            for key, _ in sel.select(max(0.0, drain_until - time.monotonic())):
                _pump(sel, key)
    finally:
        sel.close()
        os.close(pidfd)
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        if proc.returncode is None:
            kill(proc)
            proc.wait()
        _release_warden(proc)
    return Outcome(returncode, rusage, timed_out, stdout, stderr, records,
                   channel_state["bytes"], started, ended)


def cpu_counted_inside(records: list[dict], wall_seconds: float) -> float | None:
    """The CPU seconds the launcher counted as the job ended, itself and the children it
    waited for (guest/launcher.py's `exit` record), or None.

    Where no cgroup holds the run and the sandbox process does not reap the job (bwrap's
    monitor exits as soon as its init reports the job's status, before init is reaped),
    the host's rusage misses the job and its children; this count is then all there is.
    It is the job's word: capped at what the wall time allows on this host's CPUs."""
    record = next((r for r in records if r.get("type") == "exit"), None)
    ms = record.get("cpu_ms") if record is not None else None
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        return None
    return round(min(ms / 1000, wall_seconds * (os.cpu_count() or 1)), 4)


READY = b'{"type":"ready"}\n'


def await_ready(proc: subprocess.Popen, channel: int, timeout: float) -> bool:
    """Wait for a launcher started ahead of its job to say it waits (`--ready`).

    Only that line can come before the job is sent (nothing untrusted has run), so this
    reads at most its length; anything else, EOF, the sandbox's exit (an engine that
    failed before its container ran) or the timeout returns False, and supervising the
    run then reports what happened."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(channel, selectors.EVENT_READ, channel)
            sel.register(pidfd, selectors.EVENT_READ, pidfd)
            ready = [key.data for key, _ in sel.select(timeout)]
    finally:
        os.close(pidfd)
    if channel not in ready:
        return False
    try:
        return os.read(channel, len(READY)) == READY
    except OSError:
        return False


def discard(proc: subprocess.Popen, kill: Callable[[subprocess.Popen], None]) -> None:
    """End a sandbox that never got its job (a spare no longer wanted) and reap it."""
    kill(proc)
    proc.wait()
    _release_warden(proc)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass


_CANCEL = object()


def _pump(sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    try:
        chunk = os.read(key.fd, 65536)
    except OSError:
        chunk = b""
    if chunk:
        key.data(chunk)
    else:
        sel.unregister(key.fileobj)


def _channel_feed(chunk: bytes, state: dict, records: list[dict]) -> None:
    """Parse newline-delimited JSON records, dropping anything oversized or malformed."""
    state["bytes"] += len(chunk)
    if state["bytes"] > CHANNEL_CAP:
        return
    buffer = state["partial"] + chunk
    *lines, state["partial"] = buffer.split(b"\n")
    if len(state["partial"]) > RECORD_CAP:
        state["partial"] = b""
    for line in lines:
        if not line or len(line) > RECORD_CAP:
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
