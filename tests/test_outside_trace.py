"""The outside tracer (host/tracer.py): every process of the sandbox seen from outside.

Real runs on bwrap and landlock: what the audit hook cannot see (a shell, its children, a
libc-level open through ctypes) shows as kernel/runtime events; a job cannot forge a record
by writing tracer-shaped text, and cannot kill its tracer.
"""

from __future__ import annotations

import pytest

from conftest import require, run
from detain.errors import ProtectionError
from detain.report.outside_trace import parse

TRACED = ("bwrap", "landlock")


@pytest.fixture(params=TRACED)
def traced(request) -> str:
    require(request.param)
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
