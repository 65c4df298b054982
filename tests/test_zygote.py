"""Runs forked by a warm Sandbox's zygote: each a fresh process, confined on its own, sharing
nothing with the run before it, under the same limits as a run started whole."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import detain
from conftest import ROOT, leftovers, require
from detain.backends import BACKENDS

# bwrap's zygote needs root (a run's namespaces are made without a user namespace of the
# zygote's own); landlock's forks unprivileged too.
ZYGOTE_BACKENDS = ["bwrap", "landlock"] if ROOT else ["landlock"]


@pytest.fixture(params=ZYGOTE_BACKENDS)
def zygote_backend(request) -> str:
    require(request.param)
    return request.param


def warm_box(backend: str, **settings) -> detain.Sandbox:
    settings = {"backend": backend, "min_level": BACKENDS[backend].level, **settings}
    box = detain.Sandbox(detain.Policy().merge(settings, "test"), warm=1)
    assert box.zygote() is not None, box.zygote_error
    return box


def run(box: detain.Sandbox, code: str) -> detain.Result:
    result = box.run(detain.Job.code(code))
    assert result.assurance.get("zygote"), "the run was not forked by the zygote"
    return result


def test_a_file_left_in_scratch_or_tmp_is_not_in_the_next_run(zygote_backend, state_dir):
    code = ("import os, pathlib, tempfile\n"
            "seen = sorted(os.listdir('.')) + sorted(os.listdir(tempfile.gettempdir()))\n"
            "pathlib.Path('left-behind').write_text('x')\n"
            "print(seen)\n")
    with warm_box(zygote_backend) as box:
        outputs = [run(box, code) for _ in range(3)]
    assert all(r.status == 0 and b"left-behind" not in r.stdout for r in outputs), \
        [(r.stdout, r.stderr) for r in outputs]
    assert leftovers(state_dir) == {}


def test_a_process_left_running_is_gone_when_the_run_returns(zygote_backend):
    """A setsid() double-fork daemon (the classic escape from a process group)."""
    marker = f"zygote-daemon-{os.getpid()}"
    code = ("import os, subprocess, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
            f"{marker!r}], start_new_session=True)\n"
            "    os._exit(0)\n"
            "os.wait()\n"
            "print('started')\n")
    with warm_box(zygote_backend) as box:
        first = run(box, code)
        assert first.stdout == b"started\n", (first.error, first.stderr)
        assert not _host_processes_with(marker)
        second = run(box, f"import os; print({marker!r} in str(os.listdir('/proc')))")
    assert second.status == 0


def _host_processes_with(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_run_sees_no_other_runs_processes(zygote_backend):
    """bwrap: its own pid namespace holds its pid 1 and the job only. landlock: no pid
    namespace, but another process's /proc files are closed to it."""
    with warm_box(zygote_backend) as box:
        if zygote_backend == "bwrap":
            result = run(box, "import os; print(sorted(int(p) for p in os.listdir('/proc') "
                              "if p.isdigit()))")
            assert result.stdout == b"[1, 2]\n", (result.stderr, result.error)
        else:
            zygote = box.zygote().proc.pid
            result = run(box, f"open('/proc/{zygote}/environ').read()")
            assert result.status != 0 and b"PermissionError" in result.stderr


@pytest.mark.skipif(not ROOT, reason="reading the zygote's memory from the host needs root")
def test_the_zygote_holds_nothing_of_a_job(zygote_backend):
    """What a job had (its code, its environment, its stdin, what it computed) is in no
    page of the zygote afterwards, and not in the next run's environment or modules."""
    secret = "zygote-secret-" + os.urandom(8).hex()
    code = (f"import os, sys; os.environ['LEAK'] = {secret!r}; sys.leak = {secret!r} * 3; "
            "print(sys.stdin.read())")
    with warm_box(zygote_backend) as box:
        first = box.run(detain.Job.code(code, stdin=secret.encode()))
        assert first.stdout == secret.encode() + b"\n", (first.error, first.stderr)
        second = run(box, "import os, sys; print(sorted(os.environ), hasattr(sys, 'leak'))")
        memory = _memory(box.zygote().proc.pid)
        assert len(memory) > 1 << 20 and secret.encode() not in memory
    assert second.stdout == b"['HOME', 'LANG', 'PATH'] False\n", second.stderr


def _memory(pid: int) -> bytes:
    """Every readable private mapping of `pid`."""
    chunks = []
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            match = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", line)
            if match is None or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = (int(x, 16) for x in match.groups())
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(chunks)


def test_limits_hold_on_a_forked_run(zygote_backend):
    # An ordinary user without a delegated cgroup holds memory per process only.
    scope = {} if ROOT else {"limits_scope": "per-process"}
    with warm_box(zygote_backend, timeout=1, memory="128M", processes=8, **scope) as box:
        endless = run(box, "while True: pass")
        greedy = run(box, "x = bytearray(1 << 30)")
        forks = run(box, "import os, time\n"
                         "made = 0\n"
                         "for _ in range(40):\n"
                         "    try:\n"
                         "        if os.fork() == 0:\n"
                         "            time.sleep(5); os._exit(0)\n"
                         "        made += 1\n"
                         "    except OSError:\n"
                         "        break\n"
                         "print(made)\n")
    assert endless.timed_out and endless.status == 124
    assert greedy.status != 0
    assert greedy.limit == "memory" or b"MemoryError" in greedy.stderr
    assert forks.status == 0, (forks.error, forks.stderr)
    assert int(forks.stdout) < 8


def test_the_assurance_is_the_forked_runs_own(zygote_backend):
    with warm_box(zygote_backend) as box:
        result = run(box, "pass")
    assurance = result.assurance
    assert assurance["seccomp"] and assurance["no_new_privs"]
    assert assurance["capabilities"] == "none"
    assert assurance["rlimits"]["NOFILE"] == 256
    if zygote_backend == "bwrap":
        assert assurance["uid"] == 1000
        assert {"user", "pid", "net", "mnt", "ipc", "uts", "cgroup"} <= set(
            assurance["namespaces"])
        assert assurance["network_interfaces"] == ["lo"]
    else:
        assert assurance["landlock"]["enforced_before_the_job"]


def test_spares_follow_the_callers():
    """Two callers at once on warm=1: the Sandbox keeps at least two spares from then on
    (a zygote's, several per caller: they are cheap, and take a while to confine)."""
    require("landlock")
    import threading

    with warm_box("landlock") as box:
        barrier = threading.Barrier(2)

        def call() -> None:
            barrier.wait()
            assert run(box, "import time; time.sleep(0.3)").status == 0

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert box.wait_warm()
        assert len(box._spares) >= 2


@pytest.mark.skipif(not ROOT, reason="creates an ordinary user to run as")
def test_landlock_forks_as_an_ordinary_user():
    """Unprivileged, a landlock run keeps the caller's uid and (without a delegated cgroup)
    gets a reaper: the tests above, again, as an ordinary user."""
    require("landlock")
    from as_user import run_tests_as_user

    run_tests_as_user("landlock and not holds_nothing and not ordinary_user",
                      ["tests/test_zygote.py"])


KILLED_DETAIN = r'''
import sys
import detain
box = detain.Sandbox(detain.Policy().merge({"backend": "landlock", "timeout": 30}, "test"),
                     warm=1)
assert box.wait_warm() and box.zygote() is not None
print("ready", flush=True)
box.run(detain.Job.code("""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(120)
    os._exit(0)
time.sleep(120)
"""))
'''


def _descendants(pid: int) -> set[int]:
    found, pending = set(), [pid]
    while pending:
        current = pending.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.update(children)
            pending += children
    return found


def _uid(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None


@pytest.mark.skipif(not ROOT, reason="finds the run's processes by its fresh uid")
def test_a_forked_landlock_run_ends_when_detain_is_killed(state_dir):
    """Every process of a forked landlock run, a `setsid()` daemon included, ends with a
    SIGKILLed detain: the run's reaper gets SIGTERM as its parent-death signal and ends
    them (a cgroup alone left the daemon running under init)."""
    require("landlock")
    import signal
    import subprocess
    import sys
    import time

    detain_proc = subprocess.Popen([sys.executable, "-c", KILLED_DETAIN],
                                   stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert detain_proc.stdout.readline() == b"ready\n"
        time.sleep(2)  # the job forks its daemon
        uids = {_uid(p) for p in _descendants(detain_proc.pid)} - {0, None}
        assert uids, "no run was seen"
    finally:
        detain_proc.kill()
        detain_proc.wait()

    def left() -> list[int]:
        return [int(e.name) for e in Path("/proc").iterdir()
                if e.name.isdigit() and _uid(int(e.name)) in uids]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and left():
        time.sleep(0.1)
    alive = left()
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "processes of the run outlived detain"
