"""What must not get out, judged from the host's side: files, environment, network, signals."""

import os
import secrets
import signal
import socket
import subprocess
import time

from conftest import ROOT, run


def test_host_files_outside_the_sandbox_are_unreadable(backend, tmp_path):
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    code = f"""
import os
found = []
for path in [{str(secret)!r}, '/etc/shadow', '/root/.ssh/id_rsa', '/root/.bash_history']:
    try:
        with open(path) as handle:
            found.append(path + ':' + handle.read(200))
    except OSError as exc:
        found.append(path + ':denied:' + type(exc).__name__)
try:
    found.append('home:' + ','.join(os.listdir('/root')))
except OSError as exc:
    found.append('home:denied')
print('\\n'.join(found))
"""
    result = run(backend, code)
    assert result.status == 0, result.stderr
    assert token.encode() not in result.stdout + result.stderr
    assert b"/etc/shadow:denied" in result.stdout
    home = result.stdout.decode().splitlines()[-1]
    # Only the interpreter's own install (bound read-only) may show under the host's home.
    interpreter_parts = {part for d in result.assurance["read_only"] for part in d.split("/")} \
        if "read_only" in result.assurance else set()
    assert home == "home:denied" or set(home[5:].split(",")) - {""} <= interpreter_parts, home


def test_callers_environment_is_invisible(backend, monkeypatch):
    token = secrets.token_hex(16)
    monkeypatch.setenv("DETAIN_TEST_SECRET", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", token)
    code = """
import os
print(sorted(os.environ))
print(dict(os.environ))
for pid in ['self', '1'] + [p for p in os.listdir('/proc') if p.isdigit()]:
    try:
        print(open('/proc/%s/environ' % pid, 'rb').read())
    except OSError as exc:
        print(pid, 'denied')
try:
    print(open('/proc/%d/environ' % os.getppid(), 'rb').read())
except OSError:
    pass
"""
    result = run(backend, code)
    assert result.status == 0, result.stderr
    assert token.encode() not in result.stdout + result.stderr
    names = eval(result.stdout.splitlines()[0])
    assert set(names) <= {"PATH", "LANG", "HOME", "PWD", "LC_CTYPE"}
    assert set(result.assurance["environment"]) <= {"PATH", "LANG", "HOME", "PWD", "LC_CTYPE"}


def test_writes_outside_scratch_do_not_reach_the_host(backend, tmp_path):
    token = secrets.token_hex(8)
    tempting = tmp_path / "world-writable"
    tempting.mkdir()
    tempting.chmod(0o777)
    os.chmod(tmp_path, 0o755)
    targets = [tempting / f"{token}", f"/tmp/{token}", f"/var/tmp/{token}",
               f"/dev/shm/{token}", f"/{token}", f"/usr/{token}", f"/etc/{token}"]
    code = f"""
results = []
for path in {[str(t) for t in targets]!r}:
    try:
        with open(path, 'w') as handle:
            handle.write('escaped')
        results.append('wrote ' + path)
    except OSError as exc:
        results.append('failed ' + path)
with open('inside-scratch.txt', 'w') as handle:
    handle.write('fine')
print('\\n'.join(results))
"""
    try:
        result = run(backend, code)
        assert result.status == 0, result.stderr
        for target in targets:
            assert not os.path.exists(target), f"{target} was written on the host"
        for line in result.stdout.decode().splitlines():
            path = line.split(" ", 1)[1]
            if not path.startswith(("/tmp/", "/dev/shm/")):
                assert line.startswith("failed"), line
    finally:
        for target in targets:
            if os.path.exists(target) and token in str(target):
                os.unlink(target)


def test_never_runs_as_root(backend):
    result = run(backend, "import os; print(os.getuid(), os.geteuid(), os.getgid())")
    uid, euid, gid = map(int, result.stdout.split())
    assert uid != 0 and euid != 0 and gid != 0
    assert result.assurance["uid"] != 0
    assert result.assurance["host_uid"] != 0 or not ROOT


def test_tcp_and_udp_to_host_loopback_never_arrive(containing_backend):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.settimeout(0.5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp6.bind(("::1", 0))
    tcp6.listen(8)
    tcp6.settimeout(0.5)
    code = f"""
import socket
for family, kind, address in [
        (socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', {tcp.getsockname()[1]})),
        (socket.AF_INET6, socket.SOCK_STREAM, ('::1', {tcp6.getsockname()[1]})),
        (socket.AF_INET, socket.SOCK_DGRAM, ('127.0.0.1', {udp.getsockname()[1]}))]:
    try:
        s = socket.socket(family, kind)
        s.settimeout(2)
        if kind == socket.SOCK_STREAM:
            s.connect(address)
            s.sendall(b'escaped')
        else:
            for _ in range(5):
                s.sendto(b'escaped', address)
        print('sent', address)
    except OSError as exc:
        print('blocked', address, type(exc).__name__)
"""
    try:
        result = run(containing_backend, code)
        assert result.status == 0, result.stderr
        for listener in (tcp, tcp6):
            try:
                conn, _ = listener.accept()
                conn.close()
                raise AssertionError(f"a TCP connection arrived on {listener.getsockname()}")
            except TimeoutError:
                pass
        try:
            data = udp.recvfrom(100)
            raise AssertionError(f"a UDP datagram arrived: {data}")
        except TimeoutError:
            pass
        assert set(result.assurance["network_interfaces"] or []) <= {"lo"}
    finally:
        tcp.close()
        tcp6.close()
        udp.close()


def test_signals_to_host_processes_fail(containing_backend):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        code = f"""
import os, signal
for sig in (signal.SIGKILL, signal.SIGTERM):
    try:
        os.kill({victim.pid}, sig)
        print('signalled')
    except OSError as exc:
        print('refused', type(exc).__name__)
try:
    os.kill({os.getpid()}, signal.SIGTERM)
except OSError:
    pass
"""
        result = run(containing_backend, code)
        assert result.status == 0, result.stderr
        time.sleep(0.2)
        assert victim.poll() is None, "a host process was killed from inside the sandbox"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()


def test_assurance_reports_what_took_effect(containing_backend):
    result = run(containing_backend, "pass")
    assurance = result.assurance
    assert assurance["capabilities"] == "none"
    assert assurance["no_new_privs"] is True
    if containing_backend == "bwrap":
        assert {"user", "pid", "net", "ipc", "uts", "mnt"} <= set(assurance["namespaces"])
        assert assurance["seccomp"] is True and assurance["seccomp_filters"] >= 1


def test_seccomp_denies_kernel_interfaces(containing_backend):
    code = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
calls = {'ptrace': (101, 0, 0, 0, 0), 'unshare-user': (272, 0x10000000), 'bpf': (321, 0, 0, 0),
         'keyctl': (250, 0, 0, 0), 'perf_event_open': (298, 0, 0, 0, 0, 0),
         'userfaultfd': (323, 0), 'io_uring_setup': (425, 1, 0), 'mount': (165, 0, 0, 0, 0, 0)}
for name, args in calls.items():
    ret = libc.syscall(*args)
    print(name, ret, errno.errorcode.get(ctypes.get_errno()))
"""
    result = run(containing_backend, code, profile="isolated")
    assert result.status == 0, result.stderr
    for line in result.stdout.decode().splitlines():
        _name, ret, err = line.split()
        assert ret == "-1", line
        assert err in ("EPERM", "ENOSYS", "EACCES", "EFAULT", "EINVAL"), line
