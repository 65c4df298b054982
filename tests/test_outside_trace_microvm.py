"""The outside tracer inside the micro-VM (microvm/trace.py): real, slow runs (TCG, a few
seconds each), so two of them; the rest needs no VM.

What only the micro-VM case has: the tracer runs inside the guest as guest root, started
by the guest init before the job's process, and its records cross the VM's boundary on a
port of their own, capped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import require, run
from detain.host.interpreter import find_interpreter
from detain.host.tracer import HEADER, TRACE_CAP
from detain.microvm import guest_init
from detain.microvm.setup import boot_message
from detain.microvm.trace import GuestTrace

EXEC_AND_CONNECT = """
import subprocess, sys
connect = "import socket; socket.socket().connect_ex(('10.1.2.3', 4444))"
subprocess.run([sys.executable, "-c", connect, "an argument"], check=True)
"""

# The job, uid 1000 in the guest, finds its tracer and tries to end it or take it over.
KILL_AND_PTRACE = r"""
import ctypes, os, signal, subprocess, sys
tracer = int([l for l in open("/proc/self/status") if l.startswith("TracerPid")][0].split()[1])
assert tracer > 0, "not traced"
try:
    os.kill(tracer, signal.SIGKILL)
    print("killed")
except OSError as exc:
    print("kill refused", exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
print("ptrace", libc.ptrace(16, tracer, None, None))  # PTRACE_ATTACH
subprocess.run([sys.executable, "-c", "pass", "after-the-attempts"], check=True)
"""


def kernel(events: list[dict], category: str) -> list[dict]:
    return [e for e in events if e["provenance"] == "kernel/runtime"
            and e["category"] == category]


@pytest.fixture
def microvm() -> str:
    require("microvm")
    return "microvm"


def test_a_child_exec_and_its_connect_are_kernel_events(microvm, state_dir):
    result = run(microvm, EXEC_AND_CONNECT, trace="syscalls")
    assert result.ok, (result.stderr, result.error)
    events = result.behaviour["events"]
    execs = [e["detail"] for e in kernel(events, "process")]
    assert len(execs) == 1, execs
    assert execs[0]["argv"].endswith("-c import socket; socket.socket().connect_ex(('10.1.2."
                                     "3', 4444)) an argument")
    assert execs[0]["requested_at"] == "<string>:4"
    connects = [e["detail"] for e in kernel(events, "network")]
    assert [c["target"] for c in connects] == ["10.1.2.3:4444"]
    assert connects[0]["syscall"] == "connect" and connects[0]["pid"] == execs[0]["pid"]
    assert "inside the guest" in result.assurance["outside_trace"]
    assert not result.behaviour["integrity"]["flags"]


def test_cli_trace_the_job_can_neither_kill_nor_ptrace_its_tracer(microvm, state_dir,
                                                                  tmp_path):
    job = tmp_path / "job.py"
    job.write_text(KILL_AND_PTRACE)
    done = subprocess.run([sys.executable, "-m", "detain", "run", "--backend", "microvm",
                           "--trace", "--json", "-", str(job)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stdout"].splitlines() == ["kill refused 1", "ptrace -1"], result
    execs = [e["detail"]["argv"] for e in kernel(result["behaviour"]["events"], "process")]
    assert [a for a in execs if a.endswith("-c pass after-the-attempts")], execs
    assert not result["behaviour"]["integrity"]["flags"]


def test_records_past_the_cap_are_cut_at_a_record():
    """What comes off the trace port is the VM's: past the cap, the record cut in two is
    dropped and the closing record is missing, which the merge flags."""
    trace = GuestTrace()
    line = json.dumps({"type": "syscall", "syscall": "openat", "pad": "x" * 200}) + "\n"
    trace.feed((HEADER + "\n").encode())
    for _ in range(TRACE_CAP // len(line) + 2):
        trace.feed(line.encode())
    text = trace.collect()
    assert len(text) <= TRACE_CAP and text.endswith("}\n")
    assert all(json.loads(row) for row in text.splitlines())


def test_a_job_that_outlasts_its_time_limit_leaves_what_was_traced(microvm, state_dir):
    """The host ends QEMU at the time limit, so the guest never sends a closing record:
    what the tracer wrote until then has already left the VM, flagged as cut short."""
    code = ("import subprocess, sys, time\n"
            "subprocess.run([sys.executable, '-c', 'pass', 'before-the-sleep'])\n"
            "print('slept', flush=True)\ntime.sleep(60)\n")
    result = run(microvm, code, trace="syscalls", timeout=4)
    assert result.timed_out and result.stdout == b"slept\n", (result.stdout, result.stderr)
    execs = [e["detail"]["argv"] for e in kernel(result.behaviour["events"], "process")]
    assert [a for a in execs if a.endswith("-c pass before-the-sleep")], execs
    assert any("closing record is missing" in f for f in result.behaviour["integrity"]["flags"])


def test_a_traced_boot_is_another_saved_vm_and_tells_the_init_how_to_trace():
    """What the guest init reads from a traced boot message: the tracer's command line in
    tracer_main's layout (fds after the source root, one record a flush) and the filter."""
    interp, flags = find_interpreter(None), ("-I", "-S")
    plain, traced = boot_message(interp, flags), boot_message(interp, flags, trace=True)
    assert plain != traced
    read, write = os.pipe()
    os.write(write, traced)
    os.close(write)
    with os.fdopen(read, "rb", buffering=0) as pipe:
        config, blobs = guest_init.receive(pipe.fileno())
    trace = config["trace"]
    assert trace["command"][-2:] == ["/detain/tracer_main.py", "/detain"]
    argv = [*trace["command"][3:], "OUT", "REQUEST", "GO", *trace["arguments"]]
    assert argv[8] == "-" and "=openat" in argv[9] and argv[11] == "1"
    assert trace["header"] == HEADER and trace["cap"] == TRACE_CAP
    assert blobs["trace_filter"] and len(blobs["trace_filter"]) % 8 == 0
