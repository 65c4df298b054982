"""Races around a run whose detain died, or beside other runs, made deterministic: two
sweeps of the same dead run, a dead run's cgroup left frozen, a warden that starts after
its sandbox's pid was reused, a run's kill after its sandbox process was reaped, and two
runs drawing the same fresh uid."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT
from detain.backends.base import Backend
from detain.host import cgroups, privileges, rundir
from detain.host.warden import Warden

SLOW = "test-slow-resource"
calls: list[str] = []
inside = threading.Event()
release = threading.Event()


@rundir.cleaner(SLOW)
def _slow_cleaner(value: str) -> None:
    """A resource whose removal takes a while (a `runsc delete` of a dying sandbox)."""
    calls.append(value)
    inside.set()
    release.wait(10)


def test_a_sweep_waits_for_another_sweep_of_the_same_dead_run(state_dir):
    calls.clear()
    inside.clear()
    release.clear()
    run = rundir.RunDir()
    run.record(SLOW, "x")
    os.close(run._journal)  # detain died
    first = threading.Thread(target=rundir.sweep)  # its warden's sweep, say
    first.start()
    assert inside.wait(10)
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    rundir.sweep()  # the next detain start: it must not return while the run is half gone
    waited = time.monotonic() - started
    first.join(10)
    assert not run.path.exists()
    assert calls == ["x"], "the resource was removed twice, or never"
    assert waited >= 0.2, "the second sweep returned while the first was still at work"


@pytest.mark.skipif(not ROOT or cgroups.version() != 1, reason="cgroup v1 as root")
def test_a_dead_runs_frozen_cgroup_is_killed_and_removed(state_dir):
    """A detain killed inside kill_cgroup leaves the freezer FROZEN: a frozen v1 task
    ignores SIGKILL until thawed, whichever of the run's groups is removed first."""
    run = rundir.RunDir()
    group = cgroups.Cgroup.create(run, 256 << 20, 64)
    job = subprocess.Popen(["sleep", "60"])
    try:
        for path in group.dirs.values():
            (path / "cgroup.procs").write_text(str(job.pid))
        (group.dirs["freezer"] / "freezer.state").write_text("FROZEN")
        os.close(run._journal)  # detain died
        rundir.sweep()
        assert job.wait(timeout=5) == -signal.SIGKILL
        assert not [str(p) for p in group.dirs.values() if p.exists()]
    finally:
        if job.poll() is None:
            (group.dirs["freezer"] / "freezer.state").write_text("THAWED")
            job.kill()
            job.wait()


def _process_with_pid(pid: int) -> subprocess.Popen | None:
    """A new `sleep` that gets `pid`, reused through ns_last_pid (root), or None when
    another process on the host took it first. In a session of its own, as a sandbox
    process is: its group's id is that pid too."""
    for _ in range(20):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
        if victim.pid == pid:
            return victim
        victim.kill()
        victim.wait()
    return None


@pytest.mark.skipif(not ROOT, reason="reusing a pid on purpose needs root (ns_last_pid)")
def test_a_late_warden_never_kills_the_process_that_reused_its_sandbox_pid(state_dir):
    run = rundir.RunDir()
    sandbox = subprocess.Popen(["sleep", "60"], start_new_session=True)
    warden = Warden("watch", run.path)
    warden.started(sandbox)
    victim = None
    try:
        # The warden's interpreter has not started yet (it is slow under load) ...
        os.kill(warden._watcher.pid, signal.SIGSTOP)
        # ... while the sandbox ends, is reaped, and its pid goes to another process.
        sandbox.kill()
        sandbox.wait()
        victim = _process_with_pid(sandbox.pid)
        if victim is None:
            pytest.skip("another process took the pid first")
        os.kill(warden._watcher.pid, signal.SIGCONT)
        os.close(warden._write)  # detain dies: the warden ends the run at once
        warden._write = -1
        warden._watcher.wait(timeout=30)
        time.sleep(0.1)
        assert victim.poll() is None, "the warden killed the process that reused the pid"
    finally:
        if victim is not None:
            victim.kill()
            victim.wait()
        if warden._watcher.poll() is None:
            os.kill(warden._watcher.pid, signal.SIGCONT)
        warden.done()
        run.close()


class _SameDraws:
    """A random source that draws the same number until told otherwise."""

    def __init__(self, *draws: int) -> None:
        self.draws = list(draws)

    def randrange(self, span: int) -> int:
        return self.draws.pop(0)


def test_runs_of_one_process_never_share_a_fresh_uid(monkeypatch):
    """Two runs with one uid: either's cleanup (kill -9 -1 as that uid) SIGKILLs the
    other's job, which then ends with no limit, no timeout and no output."""
    monkeypatch.setattr(privileges, "_SYSTEM_RANDOM", _SameDraws(5, 5, 5, 7))
    first, second = privileges.fresh_uid(), privileges.fresh_uid()
    assert first == privileges.UID_BASE + 5
    assert second == privileges.UID_BASE + 7


@pytest.mark.skipif(not ROOT, reason="reusing a pid on purpose needs root (ns_last_pid)")
def test_a_runs_kill_after_the_reap_never_reaches_the_group_that_reused_the_pid():
    """supervise kills the run again once its sandbox process was reaped (what escaped
    it): the process group by that pid is no longer the run's to kill."""
    sandbox = subprocess.Popen(["sleep", "60"], start_new_session=True)
    sandbox.kill()
    sandbox.wait()
    victim = _process_with_pid(sandbox.pid)
    if victim is None:
        pytest.skip("another process took the pid first")
    try:
        Backend.kill(None, SimpleNamespace(cgroup=None, uid=None), sandbox)
        time.sleep(0.1)
        assert victim.poll() is None, "the run's kill reached the group that reused its pid"
    finally:
        victim.kill()
        victim.wait()
