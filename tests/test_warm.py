"""Warm spares: sandboxes started ahead of their job, really started, each used once."""

from __future__ import annotations

import os
import signal
import time

import pytest

import detain
from conftest import CONTRACT_BACKENDS, ROOT, leftovers, require
from detain.backends import BACKENDS, load

WARM_BACKENDS = [n for n in CONTRACT_BACKENDS if load(n).warm]


@pytest.fixture(params=WARM_BACKENDS)
def warm_backend(request) -> str:
    require(request.param)
    return request.param


def box_for(backend: str, spares: int = 1, **settings) -> detain.Sandbox:
    settings = {"backend": backend, "min_level": BACKENDS[backend].level, **settings}
    return detain.Sandbox(detain.Policy().merge(settings, "test"), warm=spares)


def test_the_host_and_container_backends_start_ahead():
    assert set(WARM_BACKENDS) == {"process", "landlock", "bwrap", "podman", "docker", "gvisor"}


def test_every_run_gets_a_fresh_sandbox(warm_backend, state_dir):
    """What one job leaves (a file, a variable, a process' identity) never reaches the next."""
    code = ("import os, pathlib\n"
            "seen = sorted(p.name for p in pathlib.Path('.').iterdir())\n"
            "pathlib.Path('mark').write_text('x')\n"
            "os.environ['LEAK'] = '1'\n"
            "print(seen, os.getuid(), os.readlink('/proc/self/ns/pid'), os.getpid())\n")
    with box_for(warm_backend) as box:
        assert box.wait_warm()
        outputs = []
        for _ in range(3):
            result = box.run(detain.Job.code(code))
            assert result.status == 0, (result.error, result.stderr)
            outputs.append(result.stdout.decode().split(" ", 1))
    assert all(seen == "[]" for seen, _ in outputs)
    identities = {rest for _, rest in outputs}
    assert len(identities) == 3  # a fresh uid (as root) or pid namespace each time
    assert leftovers(state_dir) == {}


def test_script_module_arguments_and_stdin(warm_backend, tmp_path):
    """The job is only known after the spare started: script staging, -m and stdin still work."""
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint(sys.argv[1:], sys.stdin.read().upper())\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(script, 0o644)
    with box_for(warm_backend) as box:
        first = box.run(detain.Job.script(str(script), "a", "b", stdin=b"input"))
        second = box.run(detain.Job.module("json.tool", stdin=b'{"k": 1}'))
        third = box.run(detain.Job.code("import sys; sys.exit(7)"))
    assert first.stdout == b"['a', 'b'] INPUT\n", first.stderr
    assert second.stdout.split() == [b"{", b'"k":', b"1", b"}"], second.stderr
    assert third.status == 7


def test_the_clock_starts_with_the_job(warm_backend):
    """A spare that waited longer than the timeout still gives its job the whole timeout,
    and the CPU its interpreter spent starting up is not the job's."""
    with box_for(warm_backend, timeout=2, cpu=1) as box:
        assert box.wait_warm()
        time.sleep(2.5)
        result = box.run(detain.Job.code("import time; time.sleep(1); print('done')"))
    assert result.status == 0 and not result.timed_out, (result.error, result.stderr)
    assert result.stdout == b"done\n"
    assert result.wall_seconds < 2


def test_limits_hold_on_a_spare(warm_backend):
    with box_for(warm_backend, timeout=2, memory="128M") as box:
        endless = box.run(detain.Job.code("while True: pass"))
        greedy = box.run(detain.Job.code("x = bytearray(1 << 30)"))
    assert endless.timed_out and endless.status == 124
    assert greedy.status != 0
    assert greedy.limit == "memory" or b"MemoryError" in greedy.stderr


def test_the_assurance_is_the_spares_own(warm_backend):
    with box_for(warm_backend) as box:
        result = box.run(detain.Job.code("pass"))
    assurance = result.assurance
    assert assurance["uid"] != 0
    assert assurance["environment"] == ["HOME", "LANG", "PATH"]
    assert assurance["rlimits"]["NOFILE"] == 256  # the job's limits, applied after it came
    if warm_backend == "bwrap":
        assert {"user", "pid", "net", "mnt"} <= set(assurance["namespaces"])
        assert assurance["seccomp"] and assurance["no_new_privs"]


def test_a_spare_that_died_is_replaced(warm_backend):
    with box_for(warm_backend) as box:
        assert box.wait_warm()
        spare = box._spares[0]
        os.killpg(spare.proc.pid, signal.SIGKILL)
        spare.proc.wait()
        result = box.run(detain.Job.code("print('still fine')"))
    assert result.status == 0 and result.stdout == b"still fine\n", result.error


def test_close_removes_spares_and_remains(warm_backend, state_dir):
    box = box_for(warm_backend, spares=2)
    assert box.wait_warm()
    for _ in range(3):
        assert box.run(detain.Job.code("pass")).status == 0
    assert box.wait_warm()
    assert len([p for p in state_dir.iterdir() if p.name.startswith("run-")]) == 2
    box.close()
    assert leftovers(state_dir) == {}
    with pytest.raises(detain.DetainError, match="closed"):
        box.run(detain.Job.code("pass"))


def test_warm_needs_a_backend_that_can_wait():
    """The micro-VM restores a saved VM whose launcher already waits: no spares of its own."""
    require("microvm")
    with pytest.raises(detain.DetainError, match="cannot start a sandbox before its job"):
        box_for("microvm")


@pytest.mark.skipif(not ROOT, reason="a fresh uid per run needs root")
def test_spares_never_share_a_uid():
    require("bwrap")
    with box_for("bwrap", spares=3) as box:
        assert box.wait_warm()
        uids = {spare.ctx.uid for spare in box._spares}
    assert len(uids) == 3


def test_a_hundred_warm_runs_leak_nothing(state_dir):
    """Spares, their pipes and their remains do not pile up: fds, threads and dirs stay flat."""
    require("bwrap")
    import threading

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with box_for("bwrap", spares=2) as box:
        box.run(detain.Job.code("pass"))
        assert box.wait_warm()
        fds, threads = open_fds(), threading.active_count()
        for index in range(100):
            result = box.run(detain.Job.code(f"print({index})"))
            assert result.stdout == f"{index}\n".encode(), (result.error, result.stderr)
        assert box.wait_warm()
        assert open_fds() == fds
        assert threading.active_count() == threads
        assert len([p for p in state_dir.iterdir() if p.name.startswith("run-")]) == 2
    assert leftovers(state_dir) == {}


def test_a_spare_that_cannot_start_fails_the_run_with_the_reason(tmp_path):
    """A policy the backend refuses (no mount namespace for --mount) is an error on every
    run, not a hang and not a silent run without the mount."""
    require("process")
    with box_for("process", mount=[f"{tmp_path}:/mnt/data"]) as box:
        assert not box.wait_warm(timeout=30)
        assert isinstance(box.warm_error, detain.DetainError)
        for _ in range(2):
            with pytest.raises(detain.DetainError, match="--mount cannot be honoured"):
                box.run(detain.Job.code("pass"))
