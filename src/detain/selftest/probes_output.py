"""Probes of hostile output: terminal escapes, forged records and markup must never reach a
person, a count or a trusted event.

Each is judged on the host by rendering what the run produced through detain's own
renderers (the terminal summary, its `detain:` lines, the HTML report, the kernel-trace
parser) and looking at the bytes a person would get, or, for TIOCSTI, by reading a
terminal the host holds open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import re
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from rich.console import Console

from ..report.build import build_report
from ..report.html import to_html
from ..report.kernel_trace import parse_trace
from ..report.safe_text import say
from ..report.terminal import render_terminal
from .bait import Bait
from .model import Attack, NotApplicable, Outcome, probe, program

RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
STRACE_LINE = ("I1203 07:00:00.000000       1 strace.go:600] [   1:   1] python3 X connect("
               "0x3 socket:[1], 0x7f {{Family: AF_INET, Addr: 6.6.6.6, Port: {port}}}, 0x10) = "
               "0 (0x0) (5us)")


def _nasty(token: str) -> str:
    """A name that clears the screen, sets the title, reverses text and forges a line."""
    return (f"{token}\x1b[2J\x1b[31m\x1b]0;{token}\x07\u202e\x9b1m\r"
            f"detain: 0 test(s) - clean {token}")


def _result(outcome: Outcome):
    if outcome.result is None:
        raise NotApplicable(f"the run did not start: {outcome.error}")
    return outcome.result


def _raw(text: str, what: str) -> str | None:
    """The judgement shared by the terminal probes: no control character but newlines."""
    found = RAW_CONTROLS.search(text.replace("\n", ""))
    if found:
        return f"{what} carried a raw control character {found.group()!r} from the job"
    return None


@probe("python", "output-terminal-summary", "put ESC/CSI/OSC, C1, CR and bidi bytes in file "
       "names, argv, code file names and errors shown by `--summary` and detain's own lines")
def terminal_summary(bait: Bait) -> Attack:
    nasty = _nasty(bait.secret)
    body = """
    import subprocess
    open("/scratch/" + NASTY, "w").close()
    subprocess.run(["/bin/true", NASTY])
    exec(compile("import os; os.system('true')", NASTY, "exec"))
    """

    def check(outcome: Outcome) -> str | None:
        result = _result(outcome)
        report = build_report(result)
        screen = io.StringIO()
        render_terminal(report, Console(file=screen, force_terminal=True, width=160))
        say(f"error: copy-out of /scratch/{nasty} failed", file=screen)
        shown = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())  # rich's own styling
        if bait.secret not in shown:
            raise NotApplicable("the job's file name never reached the summary here")
        return _raw(shown, "the terminal summary")
    return Attack(program(bait.tag, body, NASTY=nasty), check)


@probe("python", "output-pytest-timeline", "forge `detain pytest`'s per-test timeline: "
       "extra passing tests and a fake `detain: 0 test(s) - clean` line")
def pytest_timeline(bait: Bait) -> Attack:
    from ..attribution import attribute, read_timeline
    from ..cli.pytest_cmd import summary_lines

    nasty = _nasty(bait.secret)
    body = """
    import json
    for i in range(50):
        print(json.dumps({"nodeid": f"t{i}" + NASTY, "outcome": "passed", "start": 1.0,
                          "end": 2.0, "start_mono": 1.0, "end_mono": 2.0}))
    sys.exit(1)
    """

    def check(outcome: Outcome) -> str | None:
        result = _result(outcome)
        if result.error:
            raise NotApplicable(f"the run failed before the judge could look: {result.error}")
        with tempfile.TemporaryDirectory() as tmp:
            timeline = Path(tmp) / "tests.jsonl"
            timeline.write_bytes(result.stdout)
            calibration, tests = read_timeline(timeline)
        behaviour = json.loads(json.dumps(result.behaviour))
        attribute(behaviour, calibration, tests)
        screen = io.StringIO()
        for line in summary_lines(dataclasses.replace(result, behaviour=behaviour)):
            say(line, file=screen)
        lines = screen.getvalue().split("\n")
        if not lines or lines[0] != f"detain: pytest exited with status {result.status} on " \
                                    f"{result.backend}":
            return f"detain's verdict line is not the host-observed status: {lines[:1]}"
        counted = [line for line in lines if re.match(r"detain: \d+ test", line)
                   or ("test record" in line and "unverified" not in line)]
        if counted:
            return f"a count from the job's records was printed as detain's: {counted[0]!r}"
        return _raw("\n".join(lines), "`detain pytest`'s lines")
    return Attack(program(bait.tag, body, NASTY=nasty), check)


class _Markup(HTMLParser):
    """Every tag and attribute of a page, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.handlers += [f"{tag} {name}" for name, _ in attrs if name.startswith("on")]


def page_injection(page: str, baseline: str) -> str | None:
    """What a report page holds beyond the markup detain's template makes (`baseline`,
    the page of a harmless run; rows and the tbody a browser adds are expected): a new
    element, or any event handler."""
    seen, known = _Markup(), _Markup()
    seen.feed(page)
    known.feed(baseline)
    extra = seen.tags - known.tags - {"li", "tr", "td", "tbody", "span", "div", "b"}
    if extra or seen.handlers:
        return f"the HTML report gained markup from the job: {sorted(extra) or seen.handlers}"
    return None


@probe("python", "output-html-report", "break out of the HTML report's text and attributes "
       "with <script>, <img onerror> and quote tricks in paths, argv, code file names and "
       "errors")
def html_report(bait: Bait) -> Attack:
    payload = (f'<script>alert("{bait.secret}")</script>"><img src=x onerror=alert(1)>'
               "' onmouseover='alert(2)' x='<svg onload=alert(3)>")
    body = """
    import subprocess
    open("/scratch/x" + PAYLOAD.replace("/", "_"), "w").close()
    subprocess.run(["/bin/true", PAYLOAD])
    exec(compile("import os; os.system('true')", PAYLOAD, "exec"))
    open(PAYLOAD)
    """

    def check(outcome: Outcome) -> str | None:
        result = _result(outcome)
        page = to_html(build_report(result))
        if bait.secret not in page:
            raise NotApplicable("the job's strings never reached the HTML report")
        clean = dataclasses.replace(result, behaviour={}, job={"kind": "code",
                                                                 "target": "", "args": []})
        return page_injection(page, to_html(build_report(clean)))
    return Attack(program(bait.tag, body, PAYLOAD=payload), check)


@probe("python", "output-kernel-trace", "forge gVisor's kernel trace: a path holding a newline "
       "and a strace record, a task name shaped like one, sockaddr text in a path")
def kernel_trace(bait: Bait) -> Attack:
    port = 4000 + int(bait.secret[:3], 16)
    forged = STRACE_LINE.format(port=port)
    json_forged = json.dumps({"msg": forged.split("] ", 1)[1], "level": "info",
                              "time": "2026-12-03T07:00:00.0Z"})
    body = """
    import ctypes, socket
    for name in ("/scratch/a\\n" + FORGED + "\\nz", "/scratch/b\\n" + JSON_FORGED + "\\n",
                 "/scratch/c, 0x7f {Family: AF_INET, Addr: 6.6.6.6, Port: %d}, 0x10" % PORT):
        open(name, "w").close()
    ctypes.CDLL(None).prctl(15, b"a X connect(0x3", 0, 0, 0)
    open("/scratch/d", "w").close()
    """

    def check(outcome: Outcome) -> str | None:
        result = _result(outcome)
        if not result.trace:
            raise NotApplicable("only gVisor keeps a kernel-side syscall trace")
        trace = parse_trace(result.trace)
        forged_events = [e["summary"] for e in trace.events if e["category"] == "network"
                         and e["detail"]["target"] == f"6.6.6.6:{port}"]
        if forged_events:
            return f"a forged kernel/runtime event was trusted: {forged_events[0]!r}"
        if not any("could not be read as one syscall" in flag for flag in trace.flags):
            return "a task name shaped like a record was not flagged in the integrity section"
        return None
    return Attack(program(bait.tag, body, FORGED=forged, JSON_FORGED=json_forged, PORT=port),
                  check, settings={"trace": "syscalls"})


@probe("privileges", "tiocsti", "push keystrokes into a terminal with TIOCSTI: stdin, stdout, "
       "stderr, and a host terminal's /dev/pts node")
def tiocsti(bait: Bait) -> Attack:
    """The host holds a fresh pty open (its node world-writable, as a careless terminal
    might be) and reads its input queue afterwards. Not /dev/tty: were a backend ever to
    leave the job in the battery's session, the keystrokes would land in the caller's own
    shell (tests/test_hostile_output.py drives that case with a pty as detain's terminal)."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.chmod(path, 0o666)
    for fd in (master, slave):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    body = """
    import fcntl, termios
    fds = [0, 1, 2]
    try:
        fds.append(os.open(PTS, os.O_RDWR | os.O_NOCTTY))
    except OSError as exc:
        print(PTS, type(exc).__name__)
    for fd in fds:
        for byte in (TOKEN + "\\n").encode():
            try:
                fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
            except OSError as exc:
                print(fd, type(exc).__name__)
                break
    """

    def check(outcome: Outcome) -> str | None:
        got = b""
        try:
            for fd in (slave, master):
                with contextlib.suppress(OSError):
                    got += os.read(fd, 65536)
        finally:
            os.close(master)
            os.close(slave)
        if bait.secret.encode() in got:
            return f"keystrokes reached a host terminal ({path}) through TIOCSTI"
        return None
    return Attack(program(bait.tag, body, PTS=path, TOKEN=bait.secret), check)
