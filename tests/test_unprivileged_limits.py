"""Memory and disk limits hold for the whole job, or the run is refused, or it says so.

Run as root here and as an ordinary user through test_unprivileged.py. Each run forks 12
processes against a limit meant for all of them together, and the host measures what they
held (PSS of the job's processes, blocks under its scratch dir), never the job's word.
"""

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from as_user import REPO, reachable_python
from conftest import ROOT, require
from detain.backends import load
from detain.config import configure
from detain.errors import DetainError, ProtectionError
from detain.host import cgroups, disk_watch
from detain.job import Job
from detain.policy import Policy
from detain.selftest.probes_res import Peak, pss_total, scratch_bytes

MIB = 1 << 20
BACKENDS = ("bwrap", "landlock", "podman")
ALTERNATIVE = "--limits-scope per-process"

FORK_MEMORY = textwrap.dedent("""
    import os, select, time
    read_end, write_end = os.pipe()
    for _ in range(12):
        if os.fork() == 0:
            os.close(read_end)
            try:
                held = bytearray(24 << 20)
                for offset in range(0, len(held), 4096):
                    held[offset] = 1
                os.write(write_end, b'1')
            except MemoryError:
                os._exit(3)
            time.sleep(30)
            os._exit(0)
    os.close(write_end)
    got, deadline = 0, time.monotonic() + 5
    while got < 12 and time.monotonic() < deadline:
        if select.select([read_end], [], [], 0.1)[0]:
            chunk = os.read(read_end, 64)
            if not chunk:
                break
            got += len(chunk)
    time.sleep(0.5)
    print('held by', got)
""")

FORK_DISK = textwrap.dedent("""
    import os
    block = b'x' * (1 << 20)
    kids = []
    for number in range(12):
        pid = os.fork()
        if pid == 0:
            try:
                os.mkdir('fill-%d' % number)
                for part in range(8):
                    with open('fill-%d/%d' % (number, part), 'wb') as handle:
                        handle.write(block)
            except OSError:
                os._exit(1)
            os._exit(0)
        kids.append(pid)
    print(sum(os.waitpid(pid, 0)[1] != 0 for pid in kids), 'writers stopped')
""")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    require(request.param)
    return request.param


def measured_run(backend: str, code: str, measure, **settings):
    """Run `code` with `settings` while a host thread samples `measure` over the job's
    processes; returns (result or the refusal, peak)."""
    tag = f"limits-{secrets.token_hex(4)}"
    policy, _ = configure(overrides={"timeout": 30, **settings}, user_config=False)
    peak = Peak(tag, measure)
    try:
        outcome = load(backend).run(Job.code(f"# {tag}\n{code}"), policy, label=tag)
    except DetainError as exc:
        outcome = exc
    return outcome, peak.stop()


def delegated() -> bool:
    return cgroups.delegation()[0] is not None


def test_memory_asked_for_is_a_total_or_the_run_is_refused(backend):
    outcome, held = measured_run(backend, FORK_MEMORY, pss_total, memory="64M")
    if isinstance(outcome, DetainError):
        assert not ROOT and not delegated()
        message = str(outcome)
        assert isinstance(outcome, ProtectionError) and "\n" not in message
        assert ALTERNATIVE in message and "64M per process" in message, message
        assert held == 0  # refused before anything ran
        return
    assert outcome.assurance["limits"]["memory"].startswith("64M total"), outcome.assurance
    assert held <= 80 * MIB, f"12 processes held {held // MIB} MiB under a 64 MiB total"


def test_per_process_memory_accepted_is_stated(backend):
    outcome, held = measured_run(backend, FORK_MEMORY, pss_total, memory="64M",
                                 limits_scope="per-process")
    stated = outcome.assurance["limits"]["memory"]
    if ROOT or delegated():  # the kernel's OOM killer holds the total
        assert stated.startswith("64M total") and held <= 80 * MIB, (stated, held)
    else:
        assert outcome.status == 0, (outcome.error, outcome.stderr)
        assert stated.startswith("64M per process (RLIMIT_AS, no cgroup here), up to 64 "
                                 "processes; shared memory (memfd, /dev/shm) is bounded only")
        assert f"limits: memory {stated}" in outcome.notes
        assert held > 64 * MIB  # what "per process" means, measured: so the words are true


def test_disk_asked_for_is_a_total_or_the_run_is_refused(backend, tmp_path):
    for extra in ({}, {"copy_out": [f"fill-0:{tmp_path}"]}):
        outcome, held = measured_run(backend, FORK_DISK, scratch_bytes, disk="8M", **extra)
        if isinstance(outcome, DetainError):
            assert not ROOT and "\n" not in str(outcome)
            assert ALTERNATIVE in str(outcome) and "8M per file" in str(outcome)
            assert backend != "bwrap" or extra, "bwrap can cap scratch without copy-out"
            continue
        assert outcome.assurance["limits"]["disk"].startswith(
            "8M total in /scratch (size-capped tmpfs)"), outcome.assurance
        assert held <= 9 * MIB, f"scratch held {held // MIB} MiB under an 8 MiB total"
        assert outcome.stdout.split()[0] != b"0", outcome.stdout  # writers hit the cap


def test_defaults_run_unprivileged_and_say_what_holds(backend):
    outcome, _ = measured_run(backend, "print('ok')", pss_total)
    assert outcome.status == 0 and outcome.stdout == b"ok\n", (outcome.error, outcome.stderr)
    limits = outcome.assurance["limits"]
    assert set(limits) == {"memory", "processes", "disk", "cpu"}
    if ROOT or delegated():
        assert limits["memory"].startswith("512M total")
    else:
        assert limits["memory"].startswith("512M per process")


def test_watched_scratch_ends_a_job_that_passes_the_cap(backend, tmp_path):
    """Where scratch is no capped tmpfs (landlock, podman, bwrap with copy-out, as an
    ordinary user) and per-file disk is accepted, the host still ends a job that fills
    scratch past the cap at a pace it can see."""
    code = textwrap.dedent("""
        import os, time
        block = b'x' * (1 << 20)
        for number in range(40):
            with open('slow-%d' % number, 'wb') as handle:
                handle.write(block)
            time.sleep(0.1)
        print('wrote 40 MiB')
    """)
    outcome, held = measured_run(backend, code, scratch_bytes, disk="8M",
                                 limits_scope="per-process", copy_out=[f"none:{tmp_path}"])
    assert b"wrote 40 MiB" not in outcome.stdout
    # An engine's container takes a few tenths of a second to end: about 2 MiB here.
    assert held <= 12 * MIB, f"scratch held {held // MIB} MiB under an 8 MiB cap"
    if "size-capped" not in outcome.assurance["limits"]["disk"]:
        assert outcome.limit == "disk" and outcome.status == 137, (outcome.notes, outcome.stderr)
        assert any(note.startswith("disk limit hit: scratch passed the cap")
                   for note in outcome.notes), outcome.notes


def test_policy_records_which_limits_were_asked_for():
    assert Policy().limits.scope == "auto" and not Policy().limits.asked
    asked = Policy().merge({"memory": "64M"}, "test").limits
    assert "memory_bytes" in asked.asked and "disk_bytes" not in asked.asked
    with pytest.raises(DetainError, match="expected one of total, per-process"):
        Policy().merge({"limits_scope": "some"}, "test")


def test_the_disk_watch_never_follows_the_jobs_links(tmp_path):
    root = tmp_path / "scratch"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "data").write_bytes(b"x" * (1 << 20))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"y" * (4 << 20))
    (root / "link").symlink_to(outside)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        usage = disk_watch.measure(fd)
        assert usage.unmeasurable is None and MIB <= usage.bytes < 2 * MIB, usage
        parent = os.dup(fd)
        for _ in range(21):  # paths longer than the walk resolves: it must say so
            os.mkdir("d" * 200, dir_fd=parent)
            child = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
            os.close(parent)
            parent = child
        os.close(parent)
        assert "longer than" in (disk_watch.measure(fd).unmeasurable or "")
        shutil.rmtree(root / ("d" * 200))
        for number in range(50):
            (root / f"f{number}").touch()
        assert "more than 20 entries" in (disk_watch.measure(fd, 20).unmeasurable or "")
    finally:
        os.close(fd)


@pytest.mark.skipif(not ROOT, reason="making a delegated cgroup by hand needs root")
def test_a_delegated_cgroup_holds_the_total_by_hand():
    """A systemd user session delegates a cgroup v2 subtree; here one is made by hand."""
    mount = cgroups.unified_mount()
    if mount is None or not {"memory", "pids"} <= set(
            (mount / "cgroup.controllers").read_text().split()):
        pytest.skip("the cgroup v2 hierarchy here has no memory or pids controller, so "
                    "no user can be delegated one (a hybrid host)")
    user = "detain-unpriv"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        pytest.skip(f"the user {user} does not exist (test_unprivileged.py creates it)")
    group = mount / f"detain-test-delegated-{os.getpid()}"
    group.mkdir()
    try:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            shutil.chown(group / name if name else group, user)
        enabled = (mount / "cgroup.subtree_control").read_text().split()
        missing = [c for c in ("memory", "pids") if c not in enabled]
        if missing:
            (mount / "cgroup.subtree_control").write_text(" ".join("+" + c for c in missing))
        probe = ("import sys, detain\nr = detain.run(None, code=sys.argv[1], backend='bwrap', "
                 "memory='64M')\nprint(r.assurance['limits']['memory'])")
        uid = pwd.getpwnam(user).pw_uid
        path = os.pathsep.join([str(REPO / "src"), sysconfig.get_paths()["purelib"]])
        # setpriv execs (runuser would stay behind as a root process in the group).
        done = subprocess.run(
            ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", "setpriv",
             f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "env", "-i",
             "PATH=/usr/bin:/bin", f"PYTHONPATH={path}", reachable_python() or sys.executable,
             "-c", probe, FORK_MEMORY], capture_output=True, text=True, timeout=120)
        assert "64M total (cgroup v2, delegated)" in done.stdout, done.stderr[-2000:]
    finally:
        for child in sorted(group.glob("*/"), reverse=True):
            child.rmdir()
        group.rmdir()
