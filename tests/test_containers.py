"""What is particular to the container backends (podman, docker, gvisor).

The generic containment, limit and cleanup tests run on them too (conftest parametrises
over every backend that probes OK); these check what only containers have: the uid and
cgroup they get, the OCI runtime choice, limits attributed from kernel counters, the
skeleton staying untouched, containers swept after a SIGKILLed detain, rootless podman,
and gVisor's syscall trace.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import detain
from conftest import REPO, ROOT, leftovers, require, run
from conftest_containers import dockerd  # noqa: F401  (session fixture: a private dockerd)
from detain.backends import BACKENDS
from detain.errors import DetainError
from detain.host import privileges

CONTAINERS = ["podman", "docker", "gvisor"]


@pytest.fixture(params=CONTAINERS)
def container_backend(request) -> str:
    require(request.param)
    return request.param


def containers_named(backend: str, prefix: str) -> list[str]:
    """Containers (or runsc sandboxes) whose name starts with `prefix`."""
    if backend == "gvisor":
        found = []
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"runsc" in argv[0]:
                found += [a.decode() for a in argv if a.startswith(prefix.encode())]
        return found
    done = subprocess.run([shutil.which(backend), "ps", "--all", "--format", "{{.Names}}"],
                          capture_output=True, text=True, check=True)
    return [n for n in done.stdout.split() if n.startswith(prefix)]


@pytest.mark.skipif(not ROOT, reason="the fresh-uid scheme applies when detain runs as root")
def test_job_runs_as_the_runs_fresh_uid_inside_the_runs_cgroup(container_backend):
    result = run(container_backend, "import os; print(os.getuid(), os.getgid())")
    assert result.status == 0, (result.error, result.stderr)
    uid, gid = map(int, result.stdout.split())
    assert uid == gid == result.assurance["uid"] == result.assurance["host_uid"]
    assert privileges.UID_BASE <= uid < privileges.UID_BASE + privileges.UID_SPAN
    assert result.assurance["cgroup"]["memory"] == detain.Policy().limits.memory_bytes
    assert result.assurance["limits_from"].startswith("cgroup")
    assert result.assurance["capabilities"] == "none" and result.assurance["seccomp"] is True


def test_podman_picks_a_runtime_that_works_and_says_why():
    require("podman")
    from detain.backends import podman

    result = run("podman", "pass")
    engine = result.assurance["engine"]
    assert engine["mode"] == ("rootful" if ROOT else "rootless")
    if podman.hybrid_cgroups():
        assert engine["runtime"].startswith("runc") and "hybrid" in engine["runtime"]


def test_memory_limit_hit_is_observed_by_the_kernel(container_backend):
    code = "blocks = []\nwhile True:\n    blocks.append(b'x' * (1 << 20))"
    result = run(container_backend, code, memory="128M", timeout=60)
    assert result.status == 137 and result.limit == "memory", (result.error, result.notes)
    if ROOT:
        assert any("kernel" in note for note in result.notes), result.notes


def test_process_limit_stops_new_processes(container_backend):
    code = """
import subprocess, sys
children, refused = [], 0
for _ in range(40):
    try:
        children.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)']))
    except OSError:
        refused += 1
print('refused', refused)
for child in children:
    child.kill()
"""
    result = run(container_backend, code, processes=8, timeout=30, profile="isolated")
    if container_backend == "gvisor" and result.limit == "processes":
        return  # the sandbox as a whole hit the host pids cap: a limit hit, not an error
    assert result.error is None, result.error
    assert int(result.stdout.split()[-1]) > 0, result.stdout


def test_the_cached_skeleton_is_never_written():
    require("podman")
    from detain.host import rootfs
    from detain.host.tools import trusted_cache_dir

    run("podman", "pass")
    roots = sorted(trusted_cache_dir().glob("rootfs-*"))
    assert roots
    def snapshot():
        return {str(p): p.lstat().st_mtime_ns for root in roots for p in root.rglob("*")}
    before = snapshot()
    result = run("podman", "open('/etc/hostname').read()")
    assert result.status == 0, result.stderr
    assert snapshot() == before
    assert rootfs.skeleton(detain.backends.base.find_interpreter().bind_dirs) in roots


def test_docker_without_an_engine_probes_unavailable_with_the_reason(monkeypatch):
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    from detain.backends import docker

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = docker.BACKEND.probe()
    assert not result.available and "no Docker engine answers" in result.reason


def test_gvisor_runs_under_its_own_kernel():
    require("gvisor")
    result = run("gvisor", "import os; print(os.uname().release)")
    assert result.status == 0, result.stderr
    assert result.stdout.decode().strip() != os.uname().release
    assert result.assurance["kernel"].startswith("gVisor")


def test_gvisor_trace_syscalls_is_kept_raw():
    require("gvisor")
    result = run("gvisor", "open('/etc/hostname').read()", trace="syscalls")
    assert result.status == 0, result.stderr
    assert result.trace and "/etc/hostname" in result.trace and "openat" in result.trace


@pytest.mark.parametrize("backend", ["docker"])  # podman as root: test_outside_trace.py
def test_trace_is_refused_where_no_kernel_can_give_it(backend):
    require(backend)
    with pytest.raises(DetainError, match="--trace syscalls"):
        run(backend, "pass", trace="syscalls")


def test_killed_detain_leaves_its_container_to_the_next_sweep(container_backend, state_dir):
    code = "import time\nopen('started', 'w').close()\ntime.sleep(120)"
    runner = (f"import detain; detain.run(code={code!r}, backend={container_backend!r}, "
              f"min_level={BACKENDS[container_backend].level}, timeout=120)")
    child = subprocess.Popen([sys.executable, "-c", runner], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(state_dir.glob(f"run-{child.pid}-*/scratch/started")):
            assert time.monotonic() < deadline, "the sandbox never started"
            assert child.poll() is None, "detain ended early"
            time.sleep(0.05)
        prefix = f"detain-run-{child.pid}-"
        assert containers_named(container_backend, prefix)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert run(container_backend, "print('next')").stdout == b"next\n"
    time.sleep(0.3)
    assert not containers_named(container_backend, prefix)
    assert not leftovers(state_dir, {child.pid, os.getpid()})


@pytest.mark.slow
def test_200_runs_leave_no_container_bundle_or_cgroup(container_backend, state_dir):
    box = detain.Sandbox(detain.Policy().merge(
        {"backend": container_backend, "min_level": BACKENDS[container_backend].level,
         "timeout": 30}, "test"))
    for number in range(200):
        result = box.run(detain.Job.code(f"print({number})"))
        assert result.stdout == f"{number}\n".encode(), (result.error, result.stderr)
    time.sleep(0.3)
    assert not containers_named(container_backend, f"detain-run-{os.getpid()}-")
    assert not leftovers(state_dir)
    assert not list(state_dir.iterdir())


@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_rootless_podman_passes_the_generic_tests_as_an_ordinary_user():
    """The containment and limit tests, -k podman, under `runuser` as a user with subids."""
    require("podman")
    from as_user import run_tests_as_user

    run_tests_as_user("podman", ["tests/test_containment.py", "tests/test_limits.py"],
                      subids=True)
