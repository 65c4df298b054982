"""Audit-hook events: the right file:line on every backend, bounded floods, forgeries flagged."""

from __future__ import annotations

import resource

import pytest

import detain
from conftest import run
from detain.backends import BACKENDS
from detain.report.events import MAX_EVENTS, collect
from report_helpers import PAYLOAD, expected, marker_lines


def run_payload(backend: str):
    return detain.run(PAYLOAD, backend=backend, min_level=BACKENDS[backend].level)


def test_suspicious_payload_events_have_file_and_line(backend):
    result = run_payload(backend)
    assert result.status == 0, result.stderr
    events = result.behaviour["events"]
    lines = marker_lines()
    for marker, (name, category) in expected(backend).items():
        hits = [e for e in events if e["event"] == name and e["line"] == lines[marker]]
        assert hits, f"{marker}: no {name} event at payload.py:{lines[marker]}"
        assert hits[0]["file"] == "payload.py"
        assert hits[0]["category"] == category
        assert hits[0]["provenance"] == "in-process"
        assert hits[0]["suspect"] is None
    assert result.behaviour["integrity"]["complete"], result.behaviour["integrity"]


def test_launcher_frames_are_not_reported(backend):
    result = run(backend, "print('quiet')")
    assert result.behaviour["events"] == []
    assert result.behaviour["integrity"]["complete"]


@pytest.mark.slow
def test_flood_of_a_million_events_is_bounded(backend):
    code = ("import sys\n"
            "for i in range(1_000_000):\n"
            "    sys.audit('socket.connect', None, ('198.51.100.7', i))\n"
            "import socket\n"
            "try:\n    socket.getaddrinfo('late.example', 80)\nexcept OSError:\n    pass\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run(backend, code, timeout=600, cpu=600)  # ~5 s natively; emulated VMs are slower
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert result.status == 0, result.stderr
    behaviour = result.behaviour
    integrity = behaviour["integrity"]
    connects = [e for e in behaviour["events"] if e["event"] == "socket.connect"]
    assert 0 < len(connects) <= MAX_EVENTS
    assert integrity["observed"] >= 1_000_000
    assert integrity["dropped"]["socket.connect"] == 1_000_000 - len(connects)
    assert integrity["dropped_total"] >= 999_000
    # a flood of one kind does not hide another
    assert any(e["event"] == "socket.getaddrinfo" for e in behaviour["events"])
    assert grown_kib < 64 * 1024, f"host grew by {grown_kib} KiB"


# What a hostile job can do: find the audit hook's state in its own heap and write with it.
FIND_CHANNEL = """
import gc, os
fd = next(o for o in gc.get_objects() if type(o).__name__ == 'Auditor').fd
"""
FORGER = FIND_CHANNEL + """open('real.txt', 'w').close()
fake = '{"type":"event","seq":1,"t_us":5,"event":"open","category":"file","file":"x.py",'
fake += '"line":1,"args":{"path":"/innocent"}}\\n'
os.write(fd, fake.encode())
os.write(fd, b'{"type":"event","seq":99,"event":"rm -rf","category":"process"}\\n')
os.write(fd, b'{"type":"done","seq":2,"sent":1,"observed":1,"dropped":{}}\\n')
os.write(fd, b'{"type":"hello","assurance":{}}\\n')
os.write(fd, b'not json at all\\n')
"""


def test_forged_records_are_flagged(backend):
    result = run(backend, FORGER)
    assert result.status == 0, result.stderr
    behaviour = result.behaviour
    flags = " | ".join(behaviour["integrity"]["flags"])
    events = behaviour["events"]
    forged = [e for e in events if e["detail"].get("path") == "/innocent"]
    assert forged and all(e["suspect"] for e in forged), events
    assert any(e["event"] == "rm -rf" and e["suspect"] for e in events)
    assert "used twice" in flags
    assert "more than one final summary" in flags
    assert "a second 'hello' record" in flags
    assert not behaviour["integrity"]["complete"]
    real = [e for e in events if e["detail"].get("path") == "real.txt"]
    assert real and real[0]["line"] == 4


def test_missing_summary_is_reported(backend):
    result = run(backend, "import os\nopen('a', 'w').close()\nos._exit(0)")
    flags = result.behaviour["integrity"]["flags"]
    assert any("no final summary" in f for f in flags)
    assert result.behaviour["events"][0]["event"] == "open"


@pytest.mark.parametrize("records", [
    [{"type": "audit", "job_root": "/j"}, {"type": "event", "seq": "1"}],
    [{"type": "audit", "job_root": "/j"}, {"type": "event", "seq": 1, "args": [1] * 10**5}],
    [{"type": "audit", "job_root": 5}, {"type": "event", "seq": 1, "file": {"a": 1},
                                        "line": True, "t_us": "x", "args": {"k": [1, 2]}}],
])
def test_collect_never_trusts_a_record(records):
    behaviour = collect(records)
    assert behaviour["audit"] is True
    assert behaviour["integrity"]["flags"]


def test_raw_channel_flood_is_capped_and_flagged(backend):
    code = FIND_CHANNEL + (
        "line = b'{\"type\":\"event\",\"seq\":7,\"event\":\"open\"}' + b' ' * 1000 + b'\\n'\n"
        "for _ in range(20_000):\n    os.write(fd, line)\n")
    result = run(backend, code, timeout=60)
    assert result.status == 0, result.stderr
    integrity = result.behaviour["integrity"]
    assert integrity["channel_bytes"] > 20_000_000
    assert any("over detain's cap" in f for f in integrity["flags"])
    assert len(result.behaviour["events"]) <= MAX_EVENTS
