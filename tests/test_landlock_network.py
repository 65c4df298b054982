"""The landlock backend shares the host's network: every socket path to a connection or a
listener, attacked against real listeners on the host and judged from the host.

Landlock checks only TCP connect() and bind(). The review reached host listeners with
MSG_FASTOPEN sends and accepted the host's connections after listen() autobound a port;
these tests try each such path on IPv4 and IPv6 loopback. Each attack also runs on the
selftest's weak control (bwrap with the host's network and no seccomp filter), where it
must get through: an attack that reaches nothing anywhere would prove nothing here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import socket
import time

import pytest

import detain
from conftest import require
from detain.backends import load
from detain.host import seccomp
from detain.job import Job
from detain.policy import Policy
from detain.selftest import hostview
from detain.selftest.model import READY, program
from detain.selftest.probes_net import (
    LISTEN,
    SCTP,
    STREAM_PATHS,
    X32_CONNECT,
    X32_SYSCALL_BIT,
    stream_path_program,
)
from detain.selftest.weak import BACKEND as WEAK

TAG = f"landlock-network-test-{os.getpid()}"  # how the host finds this run's jobs
TCP_PATHS = [name for name, (_, protocol, _) in STREAM_PATHS.items() if protocol != SCTP]
SECRET = b"answered-by-the-job"


@pytest.fixture(params=["landlock", "control"])
def target(request):
    """The backend under test, or the weak control where every attack must succeed."""
    if request.param == "landlock":
        require("landlock")
        return load("landlock")
    if not WEAK.probe().available:
        pytest.skip(f"the weak control cannot run here: {WEAK.probe().reason}")
    return WEAK


def attack(backend, code: str, sink=None, **consts):
    """Run `code` (with `consts` defined first) on `backend`."""
    policy = Policy().merge({"timeout": 30}, "test")
    source = "".join(f"{name} = {value!r}\n" for name, value in consts.items()) + code
    return backend.run(Job.code(source), policy, stdout=sink, label=TAG)


def listeners(protocol: int = 0) -> list[socket.socket]:
    found = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM, protocol)
        sock.bind((host, 0))
        sock.listen(8)
        sock.settimeout(0.3)
        found.append(sock)
    return found


def arrived(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def assert_reached_only_on_control(backend, hosts: list[socket.socket], output: bytes) -> None:
    reached = [sock.getsockname()[:2] for sock in hosts if arrived(sock)]
    if backend is WEAK:
        assert len(reached) == len(hosts), output
    else:
        assert not reached, f"connections arrived on the host: {reached}\n{output!r}"
        assert output.count(b"PermissionError") == len(hosts), output


@pytest.mark.parametrize("path", TCP_PATHS)
def test_socket_path_never_reaches_a_host_listener(target, path):
    hosts = listeners()
    try:
        code = stream_path_program(TAG, path, [(int(s.family), s.getsockname()[:2])
                                               for s in hosts])
        result = attack(target, code)
        assert result.status == 0, result.stderr
        assert_reached_only_on_control(target, hosts, result.stdout + result.stderr)
    finally:
        for sock in hosts:
            sock.close()


def test_sctp_stream_socket_never_reaches_a_host_listener(target):
    try:
        hosts = listeners(SCTP)
    except OSError as exc:
        pytest.skip(f"this host has no SCTP to listen with ({exc.strerror})")
    try:
        code = stream_path_program(TAG, "sctp", [(int(s.family), s.getsockname()[:2])
                                                 for s in hosts])
        result = attack(target, code)
        assert_reached_only_on_control(target, hosts, result.stdout + result.stderr)
    finally:
        for sock in hosts:
            sock.close()


def test_listen_autobind_accepts_nothing_from_the_host(target):
    """The job listens without bind() and prints its ports; the host connects to each
    port it read, on loopback, while the job waits, and must not hear the job answer."""
    seen, answers = bytearray(), []

    def sink(chunk: bytes) -> None:
        seen.extend(chunk)
        if READY.encode() not in seen or answers:
            return
        for family, port in re.findall(rb"listening (\d+) (\d+)", bytes(seen)):
            host = "127.0.0.1" if int(family) == socket.AF_INET else "::1"
            answers.append(_ask(int(family), host, int(port)))
        answers.append(None)
        for proc in hostview.job_processes(TAG):
            if proc.alive and proc.comm.startswith("python"):
                os.kill(proc.pid, signal.SIGUSR1)

    result = attack(target, program(TAG, LISTEN, wait=True, SECRET=SECRET), sink)
    reached = [answer for answer in answers if answer]
    if target is WEAK:
        assert len(reached) == 2, bytes(seen)
    else:
        assert not reached, bytes(seen)
        assert bytes(seen).count(b"PermissionError") == 2, result.stdout + result.stderr


def _ask(family: int, host: str, port: int) -> str | None:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect((host, port))
            if SECRET in sock.recv(64):
                return f"{host}:{port}"
    except OSError:
        pass
    return None


# The second pair is asked for with stray upper bits in family and type, which the
# kernel drops (it reads ints) and a filter comparing 64-bit values must not miss.
DGRAM_PAIR = """
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
def raw_pair():
    fds = (ctypes.c_int * 2)()
    if libc.syscall(53, ctypes.c_long(1 | 1 << 32), ctypes.c_long(2 | 1 << 40), 0, fds):
        raise OSError(ctypes.get_errno(), 'socketpair')
    return [socket.socket(fileno=fd) for fd in fds]
for label, make in ((b'plain', lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)),
                    (b'upper-bits', raw_pair)):
    try:
        ours, theirs = make()
        with ours, theirs:
            ours.sendto(label, PATH)
    except OSError as exc:
        print(label, type(exc).__name__)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="uses x86_64 syscall numbers")
def test_datagram_socketpair_cannot_send_to_a_host_unix_socket(target, state_dir):
    """A datagram socket sends to any path it names, and Landlock does not check the
    lookup: socketpair(AF_UNIX, SOCK_DGRAM) would reach /dev/log and notify sockets."""
    where = state_dir / f"dgram-{os.getpid()}-{time.monotonic_ns()}"
    where.mkdir(mode=0o755)
    os.chmod(where, 0o755)
    path = str(where / "sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as host:
        host.bind(path)
        os.chmod(path, 0o777)
        host.settimeout(0.3)
        result = attack(target, DGRAM_PAIR, PATH=path)
        got = []
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(host.recv(64))
    os.unlink(path)
    where.rmdir()
    if target is WEAK:
        assert got == [b"plain", b"upper-bits"], result.stdout
    else:
        assert not got and result.stdout.count(b"PermissionError") == 2, result.stdout


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x32 ABI is x86_64's")
def test_x32_syscall_numbers_kill_the_job():
    """x32 syscalls carry the x86_64 audit arch with bit 30 set in the number, so a filter
    keyed on x86_64 numbers alone would let an x32 socket() through. The filter kills the
    job before the kernel looks, whether or not this kernel serves x32 at all."""
    require("landlock")
    with socket.socket() as host:
        host.bind(("127.0.0.1", 0))
        host.listen(8)
        host.settimeout(0.3)
        code = program(TAG, X32_CONNECT, X32=X32_SYSCALL_BIT, PORT=host.getsockname()[1])
        result = attack(load("landlock"), code)
        assert result.signal == signal.SIGSYS, (result.signal, result.stdout, result.stderr)
        assert b"survived" not in result.stdout
        assert not arrived(host)


def test_the_filter_is_rebuilt_when_its_rules_change(monkeypatch, tmp_path):
    """The compiled filter is cached by a digest of the module's own source."""
    before = seccomp._rules_digest(True)
    assert before != seccomp._rules_digest(False)
    changed = tmp_path / "seccomp.py"
    changed.write_bytes(open(seccomp.__file__, "rb").read() + b"\n# another rule\n")
    monkeypatch.setattr(seccomp, "__file__", str(changed))
    seccomp._rules_digest.cache_clear()
    try:
        assert seccomp._rules_digest(True) != before
    finally:
        monkeypatch.undo()
        seccomp._rules_digest.cache_clear()


def test_a_socketpair_cannot_take_a_host_abstract_name():
    """A bound socketpair held `@name` in the host's abstract namespace (EADDRINUSE for
    the host service that wanted it)."""
    require("landlock")
    name = f"detain-test-{os.getpid()}"
    code = ("import socket\na, b = socket.socketpair()\n"
            f"try:\n    a.bind('\\0{name}')\n    print('bound')\n"
            "except OSError as exc:\n    print(exc.errno)\n")
    result = detain.run(code=code, backend="landlock")
    assert result.stdout.strip() == b"1", result.stdout
    with socket.socket(socket.AF_UNIX) as host:
        host.bind(f"\0{name}")  # the name is still free on the host
