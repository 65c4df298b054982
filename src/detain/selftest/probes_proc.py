"""Process probes: reach host processes or detain's server, outlive the run, exhaust the
process table.

Whether something outlived the run is checked after every probe by the runner (any of
the job's processes still alive on the host is an escape), so the probes here that only
try to survive need no check of their own.
"""

from __future__ import annotations

import os

from ..errors import DetainError
from ..paths import server_socket
from . import hostview
from .bait import MEMORY_MARKER, Bait
from .model import Attack, NotApplicable, Outcome, leaked, probe, program


def _nothing(_out: Outcome) -> None:
    return None


@probe("processes", "signal-host", "SIGKILL / SIGTERM a host process by pid and by group")
def signal_host(bait: Bait) -> Attack:
    victim = bait.victim()
    body = """
    import signal
    for send in (lambda s: os.kill(VICTIM, s), lambda s: os.killpg(VICTIM, s)):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                send(sig)
            except OSError as exc:
                print(sig, type(exc).__name__)
    """
    return Attack(program(bait.tag, body, VICTIM=victim.pid), lambda _out: victim.dead())


@probe("processes", "ptrace-host", "read a host process's memory (/proc/PID/mem, "
       "process_vm_readv) for a secret it holds")
def ptrace_host(bait: Bait) -> Attack:
    victim = bait.victim()
    body = """
    found = []
    try:
        with open('/proc/%d/maps' % VICTIM) as maps, open('/proc/%d/mem' % VICTIM, 'rb') as mem:
            for line in maps:
                span, perms = line.split()[:2]
                if not perms.startswith('rw'):
                    continue
                start, end = (int(x, 16) for x in span.split('-'))
                try:
                    mem.seek(start)
                    chunk = mem.read(min(end - start, 64 << 20))
                except (OSError, OverflowError, ValueError):
                    continue
                at = chunk.find(PREFIX)
                if at >= 0:
                    found.append(chunk[at:at + 80])
    except OSError as exc:
        print('mem', type(exc).__name__)
    sys.stdout.buffer.write(b'\\n'.join(found) + b'\\n')
    """
    return Attack(program(bait.tag, body, VICTIM=victim.pid, PREFIX=MEMORY_MARKER.encode()),
                  lambda out: leaked(bait.secret, out, "a host process's memory"))


@probe("processes", "kill-all", "kill(-1, SIGKILL): every process the job's uid may signal",
       dangerous=True)
def kill_all(bait: Bait) -> Attack:
    victim = bait.victim()
    body = """
    import signal
    os.kill(-1, signal.SIGKILL)
    """
    return Attack(program(bait.tag, body), lambda _out: victim.dead())


@probe("processes", "double-fork", "double fork so a grandchild is orphaned and outlives "
       "the run")
def double_fork(bait: Bait) -> Attack:
    body = """
    import time
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(120)
        os._exit(0)
    """
    return Attack(program(bait.tag, body), _nothing)


@probe("processes", "setsid-daemon", "daemonize (setsid, double fork, detach stdio, ignore "
       "SIGHUP/SIGTERM) to outlive the run")
def setsid_daemon(bait: Bait) -> Attack:
    body = """
    import signal, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.chdir('/')
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            time.sleep(120)
        os._exit(0)
    """
    return Attack(program(bait.tag, body), _nothing)


@probe("processes", "exec-survivor", "start a detached non-Python program (sleep) in its own "
       "session")
def exec_survivor(bait: Bait) -> Attack:
    body = """
    import subprocess
    subprocess.Popen(['sleep', TAG], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    """
    return Attack(program(bait.tag, body, TAG=bait.tag), _nothing)


def count_check(limit: int):
    """A check: the host saw no more of the job's processes at once than the limit."""
    def check(out: Outcome) -> str | None:
        procs = hostview.seen(out.observed)
        # +3: bwrap's monitor and init, or a container's init, share the pids limit.
        if len(procs) > limit + 3:
            return f"{len(procs)} processes at once under a limit of {limit}"
        return None
    return check


@probe("processes", "fork-bomb", "fork without end", dangerous=True)
def fork_bomb(bait: Bait) -> Attack:
    body = """
    import time
    if os.fork() == 0:
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.01)
    time.sleep(1.5)
    ready()
    """
    return Attack(program(bait.tag, body, wait=True), count_check(32),
                  settings={"processes": 32, "timeout": 10},
                  observe=hostview.watcher(bait.tag))


@probe("processes", "serve-socket", "connect to the caller's `detain serve` socket (by "
       "path, through /proc/self/root, relative to the run dir) to run a job outside the "
       "sandbox")
def serve_socket(bait: Bait) -> Attack:
    from ..cli.serve_cmd import _listen

    path = server_socket()
    try:
        listener = _listen(path)  # serve's own socket: same place, same mode
    except DetainError as exc:
        raise NotApplicable(f"no bait socket where detain serve listens: {exc}") from None
    inode = os.lstat(path).st_ino

    def close() -> None:
        listener.close()
        try:
            if os.lstat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass
    bait.on_close(close)
    listener.setblocking(False)
    body = """
    import socket
    targets = [PATH, '/proc/self/root' + PATH, '../../' + os.path.basename(PATH),
               '../../../' + os.path.basename(PATH)]
    for target in targets:
        for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
            try:
                with socket.socket(socket.AF_UNIX, kind) as sock:
                    sock.settimeout(1)
                    sock.connect(target)
                    sock.sendall(b'run')
            except OSError as exc:
                print(target, kind, type(exc).__name__)
    """

    def check(_out: Outcome) -> str | None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.close()
        return f"a connection reached the detain serve socket {path}"
    return Attack(program(bait.tag, body, PATH=path), check)
