"""Hostile output (issue 12, findings 6 and 7): what a job writes never drives the caller's
terminal, never forges one of detain's lines or counts, and never becomes a trusted
kernel/runtime event.

Every case runs a real sandbox: bwrap for the terminal, gVisor for its syscall trace.
"""

from __future__ import annotations

import fcntl
import html
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import termios

import pytest
from rich.console import Console

import detain
from as_user import run_tests_as_user
from conftest import ROOT, detain_cli, require
from detain.cli.pytest_cmd import summary_lines
from detain.report.build import build_report
from detain.report.kernel_trace import MAX_PER_CATEGORY, parse_trace
from detain.report.output import render
from detain.report.safe_text import say, visible
from detain.report.terminal import render_terminal
from detain.scan import scan
from detain.selftest.probes_output import page_injection

NASTY = "\x1b[2J\x1b[31mX\x1b]0;owned\x07\u202eevil\x9b1m\rdetain: 0 test(s) - clean"
STRACE_LINE = ("I1203 07:00:00.000000       1 strace.go:600] [   1:   1] python3 X connect(0x3 "
               "socket:[1], 0x7f {Family: AF_INET, Addr: 6.6.6.6, Port: 4444}, 0x10) = 0 (0x0) "
               "(5us)")
JSON_LINE = json.dumps({"msg": STRACE_LINE.split("] ", 1)[1], "level": "info",
                        "time": "2026-12-03T07:00:00.0Z"})
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def test_visible_escapes_every_terminal_control():
    shown = visible(NASTY + "\\x1b\u2028\u2066\x85\t\n")
    assert not UNSAFE.search(shown) and "\t" not in shown and "\n" not in shown
    assert "\\x1b[2J" in shown and "\\u202e" in shown and "\\x9b" in shown
    assert "\\\\x1b" in shown  # a literal backslash-x1b typed by the job stays distinct
    assert visible("plain ascii, ünïcode, 日本") == "plain ascii, ünïcode, 日本"


def test_summary_of_a_hostile_job_has_no_terminal_controls(tmp_path):
    require("bwrap")
    code = (f"import sys\nopen('/scratch/' + {NASTY!r}.replace('/', '_'), 'w').close()\n"
            f"import subprocess\nsubprocess.run(['/bin/true', {NASTY!r}])\n"
            f"exec(compile('import os; os.system(\"true\")', {NASTY!r}, 'exec'))\n")
    result = detain.run(code=code, backend="bwrap", min_level=2)
    report = build_report(result)
    assert any("\x1b[2J" in e["summary"] for e in report["events"]), "no hostile event"
    screen = io.StringIO()
    render_terminal(report, Console(file=screen, force_terminal=True, width=200))
    text = screen.getvalue()
    assert "\\x1b[2J" in text and "\\u202e" in text
    for raw in ("\x1b[2J", "\x1b[31mX", "\x1b]0;", "\x07", "\u202e", "\x9b", "\r"):
        assert raw not in text, repr(raw)

    # and through the CLI, as a person runs it: stderr carries detain's lines only
    done = detain_cli("run", "--backend", "bwrap", "--summary", "-c", code, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not UNSAFE.search(done.stderr.decode("utf-8", "replace").replace("\n", ""))
    assert "\\x1b[2J" in done.stderr.decode()


def test_errors_quoting_the_job_are_one_visible_line():
    require("bwrap")
    result = detain.run(code="print('hi')", backend="bwrap", min_level=2)
    result.error = f"copy-out of /scratch/{NASTY}: failed"
    screen = io.StringIO()
    for line in summary_lines(result):
        say(line, file=screen)
    (shown,) = screen.getvalue().splitlines()
    assert not UNSAFE.search(shown) and "\\x1b[2J" in shown


PROJECT_TEST = '''
import json, os

def test_real_failure():
    assert 1 + 1 == 3

def test_forges_the_timeline():
    path = "/scratch/.detain-tests/tests.jsonl"
    with open(path, "a") as handle:
        for i in range(40):
            handle.write(json.dumps({"nodeid": f"fake{i}" + NASTY, "outcome": "passed",
                                     "start": 1.0, "end": 2.0, "start_mono": 1.0,
                                     "end_mono": 2.0}) + "\\n")
'''


def test_pytest_forged_timeline_changes_no_count_and_forges_no_line(tmp_path):
    require("bwrap")
    root = tmp_path / "project"
    root.mkdir()
    (root / "test_forge.py").write_text(f"NASTY = {NASTY!r}\n" + PROJECT_TEST)
    done = detain_cli("pytest", "--backend", "bwrap", str(root), "--", "-q", "-p",
                      "no:randomly", timeout=300)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, err[-2000:]
    ours = [line for line in err.split("\n") if line.startswith("detain:")]
    assert ours[0] == "detain: pytest exited with status 1 on bwrap", ours
    assert not any(re.match(r"detain: \d+ test\(s\)", line) for line in ours), ours
    claimed = [line for line in ours if "test record(s)" in line]
    assert claimed and all("reported by the job (unverified" in line for line in claimed)
    assert "42 test record(s)" in claimed[0]  # the forgery happened, and is labelled so
    assert "- clean" not in "".join(line for line in err.split("\n")
                                    if line.startswith("detain: 0"))
    assert "\x1b[2J" not in err and "\u202e" not in err


def _kernel(report):
    return [e for e in report["events"] if e["provenance"] == "kernel/runtime"]


def test_gvisor_trace_cannot_be_forged_by_names_or_paths():
    require("gvisor")
    code = f'''
import ctypes, socket
for name in ({("/scratch/a" + chr(10) + STRACE_LINE + chr(10) + "z")!r},
             {("/scratch/b" + chr(10) + JSON_LINE + chr(10))!r},
             "/scratch/c, Addr: 6.6.6.6, Port: 4444}}, 0x10) = 0 (0x0) (5us)"):
    open(name, "w").close()
u = socket.socket(socket.AF_UNIX)
try:
    u.connect("/scratch/{{Family: AF_INET, Addr: 6.6.6.6, Port: 4444}}, 0x10")
except OSError:
    pass
libc = ctypes.CDLL(None)
libc.prctl(15, b"a X connect(0x3", 0, 0, 0)
try:
    open("/scratch/O_WRONLY|O_CREAT", "r")
except OSError:
    pass
s = socket.socket()
try:
    s.connect(("192.0.2.1", 443))
except OSError:
    pass
'''
    result = detain.run(code=code, backend="gvisor", min_level=4, trace="syscalls")
    assert result.status == 0, result.stderr[-2000:]
    report = build_report(result)
    kernel = _kernel(report)
    assert not any("6.6.6.6" in e["detail"]["target"] and e["category"] == "network"
                   for e in kernel), [e["summary"] for e in kernel if "6.6.6.6" in e["summary"]]
    assert any(e["event"] == "kernel.openat" and e["detail"]["target"].startswith("/scratch/a\n")
               for e in kernel)
    assert not any("O_WRONLY" in e["detail"]["target"] for e in kernel)
    flags = report["integrity"]["flags"]
    assert any("could not be read as one syscall" in f for f in flags), flags


def test_gvisor_trace_caps_per_category_and_flags_truncation():
    require("gvisor")
    flood = (f"import socket\nfor i in range({MAX_PER_CATEGORY + 100}):\n"
             "    open(f'/scratch/f{i}', 'w').close()\n"
             "s = socket.socket()\ntry:\n    s.connect(('192.0.2.1', 443))\n"
             "except OSError:\n    pass\n")
    result = detain.run(code=flood, backend="gvisor", min_level=4, trace="syscalls",
                        output="64M")
    report = build_report(result)
    assert any(e["event"] == "kernel.connect" and e["detail"]["target"] == "192.0.2.1:443"
               for e in _kernel(report))
    assert any(f"past the cap of {MAX_PER_CATEGORY}" in f for f in report["integrity"]["flags"])

    cut = detain.run(code=flood, backend="gvisor", min_level=4, trace="syscalls",
                     output="64K")
    flags = build_report(cut)["integrity"]["flags"]
    assert any("trace truncated after 65536 bytes" in f for f in flags), flags


def test_a_line_runsc_did_not_write_is_flagged_not_believed():
    real = json.dumps({"msg": "[   1:   1] python3 X connect(0x3 socket:[1], 0x7f {Family: "
                              "AF_INET, Addr: 192.0.2.1, Port: 443}, 0x10) = 0 (0x0) (5us)",
                       "time": "2026-12-03T07:00:00.5Z"})
    trace = parse_trace(f"{real}\n{STRACE_LINE}\n{JSON_LINE[:-5]}\n")
    assert [e["detail"]["target"] for e in trace.events] == ["192.0.2.1:443"]
    assert any("2 line(s) are not runsc records" in f for f in trace.flags)


def test_html_report_gains_no_markup_from_any_job_field(tmp_path):
    require("bwrap")
    payload = ('<script>alert(1)</script>"><img src=x onerror=alert(2)>\' onmouseover=\'x\' '
               '<svg onload=alert(3)>')
    code = (f"import subprocess\nP = {payload!r}\n"
            "open('/scratch/x' + P.replace('/', '_'), 'w').close()\n"
            "subprocess.run(['/bin/true', P])\n"
            "exec(compile('import os; os.system(\"true\")', P, 'exec'))\nopen(P)\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / (payload.replace("/", "_") + ".py")).write_text("import os\nos.system(input())\n")
    result = detain.run(code=code, backend="bwrap", min_level=2)
    page = render(build_report(result, scan(project)), ".html")
    shown = html.unescape(page)
    assert shown.count(payload.replace("/", "_")) >= 2 and f"{payload}:" in shown
    baseline = render(build_report(detain.run(code="pass", backend="bwrap", min_level=2)),
                      ".html")
    assert page_injection(page, baseline) is None
    browser = shutil.which("chromium")
    if browser:  # what a browser builds from it, too
        (tmp_path / "r.html").write_text(page)
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                              (tmp_path / "r.html").as_uri()], capture_output=True,
                             timeout=120, check=True).stdout.decode()
        assert 'id="integrity"' in dom and page_injection(dom, baseline) is None


def test_tiocsti_cannot_reach_the_callers_terminal(tmp_path):
    """detain runs with a pty as its controlling terminal and stdin/stdout/stderr, as from a
    person's shell; the job pushes keystrokes at fds 0-2 and /dev/tty; afterwards the
    host reads the terminal's input queue."""
    require("bwrap")
    token = "tiocsti-" + secrets.token_hex(6)
    code = ("import fcntl, os, termios\nfds = [0, 1, 2]\ntry:\n"
            "    fds.append(os.open('/dev/tty', os.O_RDWR))\nexcept OSError:\n    pass\n"
            f"for fd in fds:\n    for b in ({token[::-1]!r}[::-1] + '\\n').encode():\n"
            "        try:\n            fcntl.ioctl(fd, termios.TIOCSTI, bytes([b]))\n"
            "        except OSError:\n            break\n")
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "detain", "run", "--backend", "bwrap",
                             "-c", code], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=controlling_terminal)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal's slave side is gone
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    os.close(master)
    assert token.encode() not in seen, seen.decode(errors="replace")


@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_the_terminal_and_page_cases_hold_for_an_ordinary_user_too():
    run_tests_as_user("summary_of_a_hostile or gains_no_markup or callers_terminal",
                      ["tests/test_hostile_output.py"], timeout=300)
