"""The landlock backend: what Landlock and its seccomp filter close, observed from inside.

The generic containment, limit and cleanup tests already run on landlock (conftest); these
cover what is particular to a sandbox without namespaces: the host's network and IPC are
shared, so no socket may be created at all (only AF_UNIX stream/seqpacket socketpairs),
every host IPC channel must be refused, and the confinement must land on the child only.
tests/test_landlock_network.py attacks real host listeners through every socket path.
"""

import os
import socket

import pytest

from conftest import REPO, ROOT, require, run
from detain.backends import probe
from detain.errors import ProtectionError
from detain.host import landlock


@pytest.fixture(autouse=True)
def landlock_available():
    require("landlock")


PROBES = r"""
import ctypes, errno, os, socket, subprocess
def attempt(name, func):
    try:
        func()
        print(name, "allowed")
    except OSError as exc:
        print(name, errno.errorcode.get(exc.errno, exc.errno))
def sock(*args):
    socket.socket(*args).close()
def tcp_connect():
    with socket.socket() as s:
        s.connect(("127.0.0.1", 9))
attempt("tcp_socket", lambda: sock(socket.AF_INET, socket.SOCK_STREAM))
attempt("tcp6_socket", lambda: sock(socket.AF_INET6, socket.SOCK_STREAM, 6))
attempt("tcp_connect", tcp_connect)
attempt("mptcp", lambda: sock(socket.AF_INET, socket.SOCK_STREAM, 262))
attempt("udp", lambda: sock(socket.AF_INET, socket.SOCK_DGRAM))
attempt("udp6", lambda: sock(socket.AF_INET6, socket.SOCK_DGRAM))
attempt("raw", lambda: sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("sctp", lambda: sock(socket.AF_INET, socket.SOCK_STREAM, 132))
attempt("unix", lambda: sock(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("netlink", lambda: sock(socket.AF_NETLINK, socket.SOCK_RAW, 0))
attempt("packet", lambda: sock(socket.AF_PACKET, socket.SOCK_RAW, 0))
attempt("socketpair", lambda: [s.close() for s in socket.socketpair()])
attempt("socketpair_seqpacket", lambda: [s.close() for s in socket.socketpair(
    socket.AF_UNIX, socket.SOCK_SEQPACKET)])
attempt("socketpair_dgram", lambda: [s.close() for s in socket.socketpair(
    socket.AF_UNIX, socket.SOCK_DGRAM)])
attempt("socketpair_inet", lambda: [s.close() for s in socket.socketpair(
    socket.AF_INET, socket.SOCK_STREAM)])
libc = ctypes.CDLL(None, use_errno=True)
def sysv():
    if libc.shmget(0, 4096, 0o1600) == -1:
        raise OSError(ctypes.get_errno(), "shmget")
attempt("sysv_shm", sysv)
def uring():
    if libc.syscall(425, 1, ctypes.create_string_buffer(120)) == -1:
        raise OSError(ctypes.get_errno(), "io_uring_setup")
attempt("io_uring", uring)
attempt("read_proc_1", lambda: open("/proc/1/cmdline").read())
attempt("list_proc", lambda: os.listdir("/proc"))
attempt("write_tmp", lambda: open("/tmp/detain-landlock-probe", "w").close())
def exec_scratch():
    with open("tool.sh", "w") as handle:
        handle.write("#!/bin/sh\necho ran\n")
    os.chmod("tool.sh", 0o755)
    subprocess.run(["./tool.sh"], check=True)
attempt("exec_scratch", exec_scratch)
attempt("exec_system", lambda: subprocess.run(["/bin/true"], check=True))
for n in range(256):
    try:
        os.fstat(n)
    except OSError:
        continue
    print("fd", n, os.readlink("/proc/self/fd/%d" % n))
"""


@pytest.fixture(scope="module")
def observed():
    result = run("landlock", PROBES)
    assert result.status == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    return result, {line.split()[0]: line.split()[-1] for line in lines if not
                    line.startswith("fd ")}, [line for line in lines if line.startswith("fd ")]


def test_probe_reports_the_abi():
    found = probe("landlock")
    assert found.available
    assert found.version == f"ABI {landlock.abi()}"
    assert dict(found.details)["abi"] == str(landlock.abi())


def test_no_socket_exists_but_unix_stream_socketpairs(observed):
    _, seen, _ = observed
    assert seen["socketpair"] == seen["socketpair_seqpacket"] == "allowed"
    for name in ("tcp_socket", "tcp6_socket", "tcp_connect", "mptcp", "udp", "udp6", "raw",
                 "sctp", "unix", "netlink", "packet", "socketpair_dgram", "socketpair_inet"):
        assert seen[name] == "EPERM", (name, seen[name])
    assert seen["io_uring"] == "EPERM"  # its IORING_OP_SOCKET would bypass the filter


def test_host_ipc_and_other_processes_are_out_of_reach(observed):
    _, seen, _ = observed
    assert seen["sysv_shm"] == "EPERM"
    assert seen["read_proc_1"] == "EACCES"
    assert seen["list_proc"] == "allowed"  # names only: there is no pid namespace to hide


def test_scratch_is_writable_but_not_executable(observed):
    _, seen, _ = observed
    assert seen["write_tmp"] == "EACCES"
    assert seen["exec_scratch"] == "EACCES"
    assert seen["exec_system"] == "allowed"


def test_the_ruleset_fd_is_not_inherited(observed):
    _, _, fds = observed
    assert not [line for line in fds if "landlock" in line], fds


def test_no_socket_is_inherited(observed):
    """The socket rule needs this half too: stdio and detain's channels are pipes."""
    _, _, fds = observed
    assert len(fds) >= 3 and not [line for line in fds if "socket:" in line], fds


def test_assurance_names_the_ruleset(observed):
    result, _, _ = observed
    seen = result.assurance
    assert seen["seccomp"] and seen["no_new_privs"]
    assert seen["capabilities"] == "none"
    assert seen["uid"] != 0
    ruleset = seen["landlock"]
    assert ruleset["abi"] == landlock.abi()
    assert "write_file" in ruleset["handled_fs"] and "execute" in ruleset["handled_fs"]
    assert len(seen["writable"]) == 1 and seen["writable"][0].endswith("/scratch")
    if landlock.abi() >= landlock.NET_ABI:
        assert set(ruleset["handled_net"]) >= {"bind_tcp", "connect_tcp"}
    if landlock.abi() >= landlock.SCOPE_ABI:
        assert set(ruleset["scoped"]) == {"signal", "abstract_unix_socket"}
    assert seen["network_interfaces"] is None  # no namespace: the host's, not observed


def test_detain_itself_is_never_confined():
    run("landlock", "print('hi')")
    status = open("/proc/self/status").read()
    assert "\nSeccomp:\t0" in status
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
    assert os.listdir(REPO)


def test_mounts_are_refused_not_ignored(tmp_path):
    with pytest.raises(ProtectionError, match="no mount namespace"):
        run("landlock", "pass", mount=[f"{tmp_path}:/mnt/in"])


def test_probe_without_landlock_says_why(monkeypatch):
    from detain.backends import landlock as backend

    monkeypatch.setattr(landlock, "abi", lambda: 0)
    found = backend.BACKEND.probe()
    assert not found.available and "no Landlock" in found.reason


def test_probe_refuses_unprivileged_runs_without_signal_scoping(monkeypatch):
    from detain.backends import landlock as backend

    monkeypatch.setattr(landlock, "abi", lambda: 5)
    monkeypatch.setattr(backend.privileges, "is_root", lambda: False)
    found = backend.BACKEND.probe()
    assert not found.available and "ABI 6" in found.reason


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_landlock_containment_as_unprivileged_user():
    """The generic contract again, with detain itself running as an ordinary user."""
    from as_user import run_tests_as_user

    run_tests_as_user("landlock", ["tests/test_containment.py", "tests/test_limits.py",
                                   "tests/test_basics.py"], timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_landlock_network_as_unprivileged_user():
    """Every socket path against host listeners again, as an ordinary user (SCTP left
    out: it skips where the host has none, and a skip fails this run)."""
    from as_user import run_tests_as_user

    run_tests_as_user("not sctp", ["tests/test_landlock_network.py"], timeout=300)
