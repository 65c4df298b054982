"""The outside tracer (host/tracer.py): every process of the sandbox seen from outside.

Real runs on bwrap, landlock and podman as root (joined by an OCI hook there:
test_outside_trace_containers.py): what the audit hook cannot see (a shell, its children, a
libc-level open through ctypes) shows as kernel/runtime events; a job cannot forge a record
by writing tracer-shaped text, and cannot kill its tracer.
"""

from __future__ import annotations

import os

import pytest

from conftest import require, run
from detain.errors import ProtectionError
from detain.report.outside_trace import merge, parse

TRACED = ("bwrap", "landlock", "podman")


@pytest.fixture(params=TRACED)
def traced(request) -> str:
    require(request.param)
    if request.param == "podman" and os.geteuid() != 0:
        pytest.skip("rootless podman cannot be traced from outside")
    return request.param


def kernel(result, category: str | None = None) -> list[dict]:
    return [e for e in result.behaviour["events"] if e["provenance"] == "kernel/runtime"
            and (category is None or e["category"] == category)]


UNSEEN = """
import ctypes, subprocess
subprocess.run(["sh", "-c", "cat /etc/hostname >/dev/null; exec true"])
ctypes.CDLL(None).open(b"/etc/passwd", 0)
"""


def test_shell_and_ctypes_open_are_kernel_events(traced):
    result = run(traced, UNSEEN, trace="syscalls")
    assert result.ok, result.stderr
    execs = {e["detail"]["target"]: e for e in kernel(result, "process")}
    assert execs["/usr/bin/sh"]["detail"]["argv"] == \
        "sh -c cat /etc/hostname >/dev/null; exec true"
    assert execs["/usr/bin/sh"]["detail"]["requested_at"] == "<string>:3"
    assert "cat /etc/hostname" in execs["/usr/bin/cat"]["detail"]["argv"]
    reads = [e for e in kernel(result, "file-read") if e["detail"]["target"] == "/etc/passwd"]
    assert reads and reads[0]["detail"]["syscall"] == "openat"
    assert "outside_trace" in result.assurance
    assert not result.behaviour["integrity"]["flags"]


def test_an_open_the_hook_saw_is_listed_once(traced):
    result = run(traced, "import os\nos.close(os.open('/usr/lib/os-release', os.O_RDONLY))",
                 trace="syscalls")
    opens = [e for e in result.behaviour["events"]
             if "/usr/lib/os-release" in str(e["detail"].get("path") or
                                             e["detail"].get("target"))]
    assert len(opens) == 1 and opens[0]["provenance"] == "in-process"


def test_a_connection_the_hook_saw_is_listed_once_with_its_line(traced):
    """The kernel's connect of the hooked interpreter corroborates the hook's event (IPv4
    and IPv6, written differently by each) instead of standing apart without a line."""
    code = ("import socket\nfor host in ('127.0.0.1', '::1'):\n    try:\n"
            "        socket.create_connection((host, 9), timeout=1)\n"
            "    except OSError:\n        pass\n")
    result = run(traced, code, trace="syscalls")
    connects = [e for e in result.behaviour["events"]
                if e["event"] in ("socket.connect", "kernel.connect")]
    # landlock without network refuses socket() itself: nothing to connect
    assert [e["event"] for e in connects] == ["socket.connect"] * (traced != "landlock") * 2
    assert all(e["line"] == 4 and "pid" in e["detail"]["kernel"] for e in connects)


def test_the_records_stay_under_what_the_host_reads_back():
    """Execs with 64 arguments of 512 characters that JSON escapes six-fold (~200 KB a
    record): the tracer stops writing at its byte cap, so the run dir never holds
    gigabytes, and the host still reads the closing record that counts what was left out."""
    require("bwrap")
    code = ("import subprocess\nbig = ['\\x01' * 512] * 63\n"
            "for _ in range(120):\n    subprocess.run(['/bin/true', *big])\n")
    result = run("bwrap", code, trace="syscalls")
    assert result.ok, result.stderr
    flags = " ".join(result.behaviour["integrity"]["flags"])
    assert "past the tracer's cap" in flags and "closing record is missing" not in flags, flags
    execs = [e for e in kernel(result, "process") if e["detail"]["target"] == "/bin/true"
             or e["detail"]["target"] == "/usr/bin/true"]
    assert 40 < sum(e["detail"]["count"] for e in execs) < 120, execs


def test_a_persistence_write_after_a_flood_of_writes_is_still_seen():
    """30,000 ordinary writes fill the tracer's cap and the listing cap; the .pth written
    after them has a reserve in both, so it is listed, and the verdict says persistence."""
    require("bwrap")
    code = ("import os\nfor i in range(30000):\n    os.close(os.open(f'/tmp/f{i % 3000}', "
            "os.O_WRONLY | os.O_CREAT))\nos.makedirs('/tmp/lib/site-packages')\n"
            "os.close(os.open('/tmp/lib/site-packages/zz.pth', os.O_WRONLY | os.O_CREAT))\n")
    result = run("bwrap", code, trace="syscalls")
    assert result.ok, result.stderr
    written = [e for e in kernel(result, "file-write") if "zz.pth" in e["detail"]["target"]]
    assert written, result.behaviour["integrity"]["flags"]
    from detain.report.build import build_report

    assert build_report(result)["verdict"]["signals"].get("persistence"), written


FORGE = r"""
import os, sys
record = '{"type":"syscall","syscall":"connect","pid":1,"exe":"/x","address":' \
         '{"family":"inet","host":"6.6.6.6","port":4444},"result":"ok"}'
fake = ('4242  connect(3, {sa_family=AF_INET, sin_port=htons(4444), '
        'sin_addr=inet_addr("6.6.6.6")}, 16) = 0')
print(record); print(fake, file=sys.stderr)
for name in ("\n" + record + "\n", fake, 'x", "6.6.6.6:4444'):
    try:
        open(name.replace("/", "_"), "w").close()
    except OSError:
        pass
"""


def test_job_written_records_are_not_events(traced):
    result = run(traced, FORGE, trace="syscalls")
    assert result.ok, result.stderr
    assert not kernel(result, "network")
    assert all("6.6.6.6" not in e["summary"] or e["category"] == "file-write"
               for e in kernel(result))
    assert not result.behaviour["integrity"]["flags"]


KILL_TRACER = r"""
import ctypes, os, signal
tracer = int([l for l in open("/proc/self/status") if l.startswith("TracerPid")][0].split()[1])
print("tracer", tracer)
for pid in {tracer} - {0}:  # 0 on bwrap: the tracer is outside the job's pid namespace
    try:
        os.kill(pid, signal.SIGKILL)
        print("killed", pid)
    except OSError as exc:
        print("refused", pid, exc.errno)
ctypes.CDLL(None).open(b"/etc/passwd", 0)
"""


def test_the_job_cannot_kill_its_tracer(traced):
    result = run(traced, KILL_TRACER, trace="syscalls")
    out = result.stdout.decode()
    assert result.ok, (out, result.stderr)
    assert "tracer " in out and "killed" not in out
    assert any(e["detail"]["target"] == "/etc/passwd" for e in kernel(result, "file-read"))
    assert not result.behaviour["integrity"]["flags"]


def test_untraceable_backend_refuses_trace():
    require("process")
    with pytest.raises(ProtectionError):
        run("process", "pass", trace="syscalls")


def test_parser_takes_nothing_but_tracer_records():
    events, flags, *_ = parse('{"type":"outside-trace","version":1}\n'
                             '4242  connect(3, {sa_family=AF_INET}) = 0\n')
    assert not events
    assert any("not tracer records" in f for f in flags)
    assert any("closing record is missing" in f for f in flags)
    assert parse("garbage")[1]


CLEAN = {"events": [], "integrity": {"flags": [], "flags_total": 0, "complete": True}}
HEAD = '{"type":"outside-trace","version":1}\n'


@pytest.mark.parametrize("trace", [
    HEAD + '{"type":"end","records":5,"dropped":3,"dropped_vital":0,"cap":5,"reserve":1}\n',
    HEAD + "not a record\n" + '{"type":"end","records":0,"dropped":0}\n',
    HEAD])
def test_any_loss_of_the_trace_makes_the_run_incomplete(trace):
    behaviour = {"events": [], "integrity": dict(CLEAN["integrity"])}
    merge(behaviour, trace)
    assert behaviour["integrity"]["flags"] and behaviour["integrity"]["complete"] is False


FLOOD = """
import os
open("f", "w").close()
for i in range(18000):
    os.chmod("f", 0o600 | (i & 1) * 0o4)
os.waitpid(os.posix_spawn("/bin/sh", ["sh", "-c", "true"], os.environ), 0)
"""


def test_a_flood_past_the_cap_is_incomplete_and_keeps_a_later_exec(traced):
    result = run(traced, FLOOD, trace="syscalls")
    assert result.ok, result.stderr
    integrity = result.behaviour["integrity"]
    assert integrity["complete"] is False
    assert any("past the tracer's cap" in f and "none of them an exec" in f
               for f in integrity["flags"]), integrity["flags"]
    execs = [e for e in kernel(result, "process") if e["detail"]["target"] == "/bin/sh"]
    assert execs and execs[0]["detail"]["requested_at"] == "<string>:6"


MEMFD = """
import os
fd = os.memfd_create("payload", 0)
with open("/bin/true", "rb") as binary:
    os.write(fd, binary.read())
for path in (fd, f"/proc/self/fd/{fd}"):
    pid = os.fork()
    if pid == 0:
        os.execve(path, ["payload"], {})
    os.waitpid(pid, 0)
"""


def test_an_exec_of_a_memfd_is_fileless(traced):
    result = run(traced, MEMFD, trace="syscalls")
    assert result.ok, result.stderr
    fileless = [e for e in kernel(result, "process") if e["detail"].get("fileless")]
    assert {e["detail"]["syscall"] for e in fileless} == {"execve", "execveat"}
    for event in fileless:
        assert event["detail"]["target"] == "/memfd:payload (deleted)"
        assert event["detail"]["process"] == "/memfd:payload (deleted)"
        assert event["severity"] == "high"
        assert event["summary"].startswith("fileless exec /memfd:payload")
    by_path = {e["detail"]["path"]: e for e in fileless}
    assert len(by_path) == 2 and "" in by_path  # the memfd's number varies per backend
    assert all(path.startswith("/proc/self/fd/") for path in by_path if path)
    assert by_path[""]["detail"]["requested_at"] == "<string>:9"


SPAWN_TWICE = """
import os, subprocess
subprocess.run(["sh", "-c", "true"])
os.waitpid(os.posix_spawn("/bin/sh", ["sh", "-c", "exit 0"], os.environ), 0)
subprocess.run(["sh", "-c", "exit 0"])
"""


def test_each_exec_names_its_own_spawn_line(traced):
    result = run(traced, SPAWN_TWICE, trace="syscalls")
    assert result.ok, result.stderr
    lines = [e["detail"].get("requested_at") for e in kernel(result, "process")
             if e["detail"]["target"].endswith("/sh")]
    assert lines == ["<string>:3", "<string>:4", "<string>:5"]


FORK = """
import gc, json, os
pid = os.fork()
if pid == 0:
    open("child", "w").close()
    if REPLAY:
        auditor = next(o for o in gc.get_objects() if type(o).__name__ == "Auditor")
        for stream in (auditor.stream, "99"):
            os.write(auditor.fd, (json.dumps({"type": "event", "seq": 1, "stream": stream,
                     "event": "open", "category": "file", "args": {"path": "/fake"}})
                     + "\\n").encode())
    raise SystemExit(0)
os.waitpid(pid, 0)
open("parent", "w").close()
"""


@pytest.mark.parametrize("replay", [False, True])
def test_an_honest_fork_raises_no_flag_a_replay_does(traced, replay):
    result = run(traced, f"REPLAY = {replay}\n" + FORK, trace="syscalls")
    assert result.ok, result.stderr
    integrity = result.behaviour["integrity"]
    opens = {e["detail"].get("path"): e for e in result.behaviour["events"]
             if e["event"] == "open"}
    assert opens["child"]["line"] == 6 and opens["child"]["pid"] != 1
    assert opens["parent"]["suspect"] is None
    if not replay:
        assert integrity["complete"] and not integrity["flags"], integrity
        return
    flags = " | ".join(integrity["flags"])
    assert "sequence number 1 used twice" in flags and "announced by no fork" in flags
    assert opens["child"]["suspect"] and not integrity["complete"]


def _syscall(pid: int, name: str, path: str, **more) -> str:
    import json

    return json.dumps({"type": "syscall", "pid": pid, "ppid": 1, "syscall": name,
                       "result": "ok", "paths": [path], "t": 0.1, **more}) + "\n"


def test_a_python_without_the_audit_hook_is_marked_however_it_is_named():
    """Told apart by what every CPython opens as it starts (encodings), renamed or not; a
    Python whose hook opened its log (the install phase's beacon) is not marked."""
    trace = (HEAD + _syscall(10, "execve", "/usr/bin/python3", argv=["python3"])
             + _syscall(11, "execve", "/tmp/x/gcc", argv=["gcc", "-S", "-c", "pass"])
             + _syscall(11, "openat", "/usr/lib/python3.11/encodings/__init__.py", flags=0)
             + _syscall(12, "execve", "/scratch/venv/bin/python", argv=["python", "-S"])
             + _syscall(12, "openat", "/x/encodings/__pycache__/__init__.cpython-311.pyc",
                        flags=0)
             + _syscall(13, "execve", "/scratch/venv/bin/python", argv=["python", "b.py"])
             + _syscall(13, "openat", "/scratch/audit-children/13.jsonl", flags=0o2101)
             + _syscall(14, "execve", "/usr/bin/cat", argv=["cat"])
             + '{"type":"end","records":9,"dropped":0}\n')
    events, flags, launcher, _setup = parse(trace)
    assert launcher == 10 and not flags
    unhooked = {e["detail"]["target"] for e in events if e["detail"].get("unhooked")}
    assert unhooked == {"/tmp/x/gcc", "/scratch/venv/bin/python"}
    assert [e["detail"]["pid"] for e in events if e["detail"].get("unhooked")] == [11, 12]
    again = parse(trace.replace('{"type":"end"', _syscall(10, "execve", "/usr/bin/python3",
                                                          argv=["python3", "-S"])
                                + '{"type":"end"'))[0]
    assert sorted(e["detail"]["pid"] for e in again if e["detail"].get("unhooked")) == [10, 11, 12]


def test_a_python_started_with_minus_s_is_marked_unhooked(traced):
    result = run(traced, "import subprocess, sys\n"
                 "subprocess.run([sys.executable, '-S', '-c', 'pass'], check=True)",
                 trace="syscalls")
    assert result.ok, result.stderr
    children = [e for e in kernel(result, "process") if "-S" in e["detail"].get("argv", "")]
    assert children and children[0]["detail"].get("unhooked") is True, children
    assert "without detain's audit hook" in children[0]["summary"]


PROC_ENVIRON_READS = """
import os
fd = os.open("/proc/self", os.O_RDONLY)
for path, where in (("environ", fd), (f"/proc/{os.getpid()}/task/{os.getpid()}/environ", None)):
    try:
        os.close(os.open(path, os.O_RDONLY, dir_fd=where))
    except PermissionError:
        pass  # landlock refuses it: the attempt is what is judged
"""


def test_a_process_environ_is_credentials_however_the_path_is_spelled(traced):
    """Relative to a dir fd of /proc/self, or through /proc/PID/task/TID: the tracer
    resolves the first, and both are credentials read in the verdict."""
    from detain.report.build import build_report

    report = build_report(run(traced, PROC_ENVIRON_READS, trace="syscalls"))
    assert report["verdict"]["signals"].get("credentials read", 0) >= 2, report["verdict"]
    high = {str(e["detail"].get("target") or e["detail"].get("path"))
            for e in report["events"] if e["severity"] == "high"}
    assert any("/task/" in p for p in high), high
    assert any(p.endswith("/environ") and "/task/" not in p for p in high), high
