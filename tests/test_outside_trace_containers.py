"""The outside tracer on a container an engine starts (host/trace_hook.py): real podman runs.

What only the container case has: the tracer is joined by an OCI hook, not by detain's
fork-exec step; the container's own seccomp profile makes the stops; the engine's
machinery (podman, conmon, runc) is never the job's. test_outside_trace.py runs its
backend-independent cases on podman too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import leftovers, require, run
from detain.backends.podman import find_runtime
from detain.errors import ProtectionError
from detain.host import seccomp_oci

EXEC_AND_CONNECT = """
import subprocess, sys
subprocess.run(["/bin/sh", "-c", "cat /etc/hostname"], check=True)
connect = "import socket; socket.socket().connect_ex(('10.1.2.3', 4444))"
subprocess.run([sys.executable, "-c", connect])
"""


@pytest.fixture
def podman() -> None:
    require("podman")
    if os.geteuid() != 0:
        pytest.skip("the container tracer needs podman as root")


def kernel(result, category: str) -> list[dict]:
    return [e for e in result.behaviour["events"]
            if e["provenance"] == "kernel/runtime" and e["category"] == category]


def test_exec_and_connect_of_subprocesses_are_kernel_events(podman, state_dir):
    result = run("podman", EXEC_AND_CONNECT, trace="syscalls")
    assert result.ok, result.stderr
    assert result.stdout.decode().strip() == "detain"
    execs = {e["detail"]["target"]: e["detail"] for e in kernel(result, "process")}
    assert execs["/bin/sh"]["argv"] == "/bin/sh -c cat /etc/hostname"
    assert execs["/bin/sh"]["requested_at"] == "<string>:3"
    assert execs["/usr/bin/cat"]["argv"] == "cat /etc/hostname"
    connects = [e["detail"] for e in kernel(result, "network")]
    assert [c["target"] for c in connects] == ["10.1.2.3:4444"]
    assert connects[0]["syscall"] == "connect" and connects[0]["process"] != execs["/bin/sh"]
    # The engine's own processes are not the job's: no podman, conmon, runc or env.
    shown = {e["detail"]["process"] for e in result.behaviour["events"]
             if e["provenance"] == "kernel/runtime"}
    assert not {p for p in shown if any(n in str(p) for n in ("podman", "conmon", "runc",
                                                               "/usr/bin/env"))}
    assert "outside_trace" in result.assurance
    assert result.behaviour["integrity"]["complete"], result.behaviour["integrity"]
    assert not leftovers(state_dir)
    assert not _tracers(), "a tracer outlived its run"
    assert not _containers(state_dir)


ATTACK = r"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
            print("killed", pid)
        except OSError as exc:
            print("kill refused", pid, exc.errno)
    for request in (16, 0x4206):  # PTRACE_ATTACH, PTRACE_SEIZE
        if libc.ptrace(request, pid, 0, 0) == 0:
            print("ptrace attached", pid)
        else:
            print("ptrace refused", pid, ctypes.get_errno())
print("traceme", libc.ptrace(0, 0, 0, 0), ctypes.get_errno())
libc.open(b"/etc/passwd", 0)
"""


def test_the_job_can_neither_kill_nor_ptrace_its_tracer(podman):
    result = run("podman", ATTACK, trace="syscalls")
    out = result.stdout.decode()
    assert result.ok, (out, result.stderr)
    assert "killed" not in out and "attached" not in out, out
    assert "ptrace refused" in out and "traceme -1 1" in out  # EPERM: seccomp denies it
    assert any(e["detail"]["target"] == "/etc/passwd" for e in kernel(result, "file-read"))
    assert result.behaviour["integrity"]["complete"], result.behaviour["integrity"]


FOREIGN_ABI = """
import ctypes, mmap
code = bytes.fromhex("b814000000cd80c3")  # mov eax, 20 (i386 getpid); int 0x80; ret
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
call = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print("i386 syscall ran", call(), flush=True)
"""


def test_a_syscall_of_another_abi_cannot_pass_the_tracer_unseen(podman):
    result = run("podman", FOREIGN_ABI, trace="syscalls")
    assert b"i386 syscall ran" not in result.stdout
    assert result.signal == 31  # SIGSYS: the traced profile admits the native ABI only


def test_if_the_tracer_dies_the_container_dies_with_it(podman, state_dir):
    code = "import time\nopen('started', 'w').close()\ntime.sleep(60)\nprint('survived')"
    results: list = []
    runner = threading.Thread(target=lambda: results.append(
        run("podman", code, trace="syscalls", timeout=90)))
    runner.start()
    deadline = time.monotonic() + 30
    while not list(state_dir.glob("run-*/scratch/started")) and time.monotonic() < deadline:
        time.sleep(0.05)
    tracers = _tracers()
    assert len(tracers) == 1, tracers
    os.kill(tracers[0], signal.SIGKILL)  # this test's own child
    runner.join(30)
    result = results[0]
    assert result.signal == signal.SIGKILL and b"survived" not in result.stdout
    assert result.wall_seconds < 30
    assert any("closing record is missing" in f for f in result.behaviour["integrity"]["flags"])
    assert not leftovers(state_dir) and not _containers(state_dir)


def test_the_traced_profile_runs_nothing_without_its_tracer(podman, tmp_path):
    """The profile alone (no hook, no tracer): the command's exec fails (ENOSYS), so a
    container whose tracer never attached cannot run the job untraced."""
    for name in ("usr", "etc", "proc", "dev", "sys", "tmp"):
        (tmp_path / name).mkdir()
    for link in ("bin", "lib", "lib64"):
        (tmp_path / link).symlink_to(f"usr/{link}")
    statuses = {}
    for traced in (False, True):
        done = subprocess.run(
            ["podman", "--runtime", find_runtime()[0], "--cgroup-manager", "cgroupfs", "run",
             "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=1024:1024", "--security-opt", "no-new-privileges",
             "--security-opt", f"seccomp={seccomp_oci.profile_path(traced)}",
             "--mount", "type=bind,source=/usr,destination=/usr,readonly",
             "--rootfs", str(tmp_path), "/usr/bin/env", "echo", "ran"],
            capture_output=True, timeout=120, check=False)
        statuses[traced] = (done.returncode, done.stdout)
    assert statuses[False] == (0, b"ran\n")
    assert statuses[True][0] != 0 and b"ran" not in statuses[True][1]


def test_rootless_podman_refuses_trace_saying_what_to_use():
    """Run again as an ordinary user with subordinate ids (tests/as_user.py)."""
    require("podman")
    if os.geteuid() == 0:
        from as_user import run_tests_as_user

        run_tests_as_user("rootless_podman_refuses", ["tests/test_outside_trace_containers.py"],
                          subids=True)
        return
    with pytest.raises(ProtectionError, match=r"rootless podman.*run detain as root, or use "
                                              r"--backend bwrap or landlock"):
        run("podman", "pass", trace="syscalls")


def test_docker_refuses_trace_and_says_why():
    require("docker")
    with pytest.raises(ProtectionError, match=r"no per-run OCI hook.*--backend podman"):
        run("docker", "pass", trace="syscalls")


def _tracers() -> list[int]:
    """This test process's own tracer children still running."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat and stat[0] != "Z" and int(stat[1]) == os.getpid() \
                and b"tracer_main" in cmdline:
            found.append(int(entry.name))
    return found


def _containers(state: Path) -> list[str]:
    """Containers of this test's runs that podman still knows."""
    done = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}} {{.Labels}}"],
                          capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if str(state) in line]
