"""Issue 12, finding 4: no process of a run outlives it, even when detain itself is killed.

Every check is made from the host's own /proc (and the engine's container list): a job
leaves a setsid() double-fork daemon and sleeps past its wall clock, then either finishes,
or the `detain run` driving it is SIGKILLed (a cancelled CI job) or stopped (Ctrl-Z). No
later detain start may be needed to end anything: the run's warden does it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from as_user import run_tests_as_user
from conftest import ROOT, require, run
from detain.backends import BACKENDS
from detain.host.warden import GRACE

BACKENDS_HERE = ["landlock", "process", "bwrap", "podman", "docker", "gvisor"]
TIMEOUT = 3


def _daemon_job(token: str, main_sleep: float = 120) -> str:
    """A job that daemonizes a grandchild (which sleeps for two minutes), says it
    started, then sleeps `main_sleep` seconds itself."""
    return (f"import ctypes, os, time\nctypes.CDLL(None).prctl(15, {token!r}.encode(), 0, 0, 0)\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        for fd in (0, 1, 2):\n            os.close(fd)\n"
            "        time.sleep(120)\n    os._exit(0)\n"
            f"print('started', flush=True)\ntime.sleep({main_sleep})\n")


def _alive(token: str, exclude: set[int] = frozenset(), run_prefix: str = "",
           ignore: bytes | None = None) -> list[str]:
    """Live host processes of the run, as 'pid comm': the job's (named `token` by the job
    itself, prctl(PR_SET_NAME), inherited by its forks), and, with `run_prefix`, the
    sandbox machinery whose command line names the run's dir (bwrap, runsc, conmon),
    but not those whose command line holds `ignore`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude | {os.getpid()}:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            comm = (entry / "comm").read_text().strip()
        except (OSError, IndexError):
            continue
        ours = comm == token or (run_prefix and run_prefix.encode() in cmdline)
        ours = ours and (ignore is None or ignore not in cmdline)
        if ours and state not in ("Z", "X"):
            found.append(f"{entry.name} {comm}")
    return found


def _containers(prefix: str, running_only: bool = False) -> list[str]:
    """Containers whose name starts with `prefix`, as each engine here lists them."""
    names = []
    for engine in filter(None, (shutil.which("podman"), shutil.which("docker"))):
        done = subprocess.run([engine, "ps", *(() if running_only else ("-a",)), "--format",
                               "{{.Names}}"], capture_output=True, text=True, timeout=60)
        names += [name for name in done.stdout.split() if name.startswith(prefix)]
    return names


def _until_gone(token: str, exclude: set[int], seconds: float,
                run_prefix: str = "") -> list[str]:
    end = time.monotonic() + seconds
    while (left := _alive(token, exclude, run_prefix)) and time.monotonic() < end:
        time.sleep(0.1)
    return left


def _start_cli(backend: str, token: str) -> subprocess.Popen:
    cli = subprocess.Popen(
        [sys.executable, "-m", "detain", "run", "--backend", backend, "--min-level",
         str(BACKENDS[backend].level), "--timeout", str(TIMEOUT), "-c", _daemon_job(token)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = cli.stdout.readline()
    assert line == b"started\n", f"the sandbox never started ({line!r})"
    return cli


@pytest.fixture(params=BACKENDS_HERE)
def survivor_backend(request) -> str:
    require(request.param)
    return request.param


def test_a_daemon_does_not_outlive_a_finished_run(survivor_backend):
    token = uuid.uuid4().hex[:15]  # a comm holds 15 bytes
    result = run(survivor_backend, _daemon_job(token, main_sleep=0.3), timeout=20)
    assert result.stdout == b"started\n" and result.status == 0, result
    assert not _until_gone(token, set(), 2.0)


def test_a_daemon_does_not_outlive_a_timed_out_run(survivor_backend):
    token = uuid.uuid4().hex[:15]  # a comm holds 15 bytes
    result = run(survivor_backend, _daemon_job(token), timeout=1)
    assert result.timed_out
    assert not _until_gone(token, set(), 2.0)


def test_sigkilled_detain_leaves_nothing_running(survivor_backend, state_dir):
    """The run's warden ends it as soon as detain is gone, and removes its run dir."""
    token = uuid.uuid4().hex[:15]  # a comm holds 15 bytes
    cli = _start_cli(survivor_backend, token)
    try:
        if survivor_backend != "gvisor":  # gVisor's processes live in its own kernel
            assert _alive(token, {cli.pid}), "the job was not visible from the host"
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        cli.stdout.close()
    left = _until_gone(token, {cli.pid}, TIMEOUT + GRACE + 2, f"run-{cli.pid}-")
    assert not left, f"{left} outlived a SIGKILLed detain past timeout + grace"
    assert not _containers(f"detain-run-{cli.pid}-")
    end = time.monotonic() + 10
    while (dirs := list(state_dir.glob(f"run-{cli.pid}-*"))) and time.monotonic() < end:
        time.sleep(0.1)
    assert not dirs, "the warden did not remove the dead run's dir"


@pytest.mark.parametrize("backend", ["landlock", "podman"])
def test_stopped_detain_still_ends_the_run_on_its_wall_clock(backend):
    """A stopped detain (Ctrl-Z) does not stretch the wall clock: the warden ends the run
    at timeout + grace, and detain, once continued, reports a timed-out run."""
    require(backend)
    token = uuid.uuid4().hex[:15]  # a comm holds 15 bytes
    cli = _start_cli(backend, token)
    try:
        assert _alive(token, {cli.pid}), "the job was not visible from the host"
        cli.send_signal(signal.SIGSTOP)
        time.sleep(TIMEOUT + GRACE + 1)
        # The warden itself stays, waiting for the stopped detain to finish or die.
        left = _alive(token, {cli.pid}, f"run-{cli.pid}-", ignore=b"detain.host.warden")
        running = _containers(f"detain-run-{cli.pid}-", running_only=True)
        cli.send_signal(signal.SIGCONT)
        cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        cli.stdout.close()
    assert not left, f"{left} ran past timeout + grace while detain was stopped"
    assert not running
    assert cli.returncode == 124  # detain's status for a run that hit its wall clock


@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_survivors_as_unprivileged_user():
    """Unprivileged landlock and process (no uid, no cgroup, no pid namespace), bwrap and
    rootless podman."""
    require("landlock")
    run_tests_as_user("landlock or process or bwrap or podman", ["tests/test_survivors.py"],
                      subids=True, timeout=600)
