"""Reports that add up (issue 16): the summary's counts match the rows shown, a list cut
short says how much it left out, `detain scan` claims nothing about a run, pipe fds are
not file reads, and selftest neither repeats the venv warning nor scores a backend whose
probes could not even start."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

import detain
from conftest import detain_cli, require
from detain.report.build import build_report, is_notable
from detain.report.human import duration, more
from detain.report.output import render
from detain.report.terminal import ROWS, grouped, render_terminal
from detain.selftest import PROBES, report, resolve
from detain.selftest.bait import Session
from detain.selftest.model import NOT_APPLICABLE
from detain.selftest.render import escapes, matrix
from detain.selftest.runner import run_target
from report_helpers import FIXTURE

# pipes (two fds), a sensitive read (high, yet a file-read), a process, three writes
JOB = """
import os, subprocess
subprocess.run(["/bin/true"], capture_output=True)
try:
    open("/etc/shadow").read()
except OSError:
    pass
os.system("true")
for i in range(3):
    open(f"f{i}", "w").close()
"""


def _screen(report: dict) -> str:
    screen = io.StringIO()
    render_terminal(report, Console(file=screen, width=240, emoji=False))
    return screen.getvalue()


def test_summary_counts_match_the_rows_shown():
    require("bwrap")
    report = build_report(detain.run(code=JOB, backend="bwrap", min_level=2))
    summary, groups = report["summary"], grouped(report["events"])
    assert summary["notable"] == sum(g["count"] for g in groups) == sum(
        map(is_notable, report["events"]))
    assert all(is_notable(e) for e in report["events"] if e["severity"] == "high")
    assert summary["high"] >= 3  # the process, the shell, /etc/shadow
    text = _screen(report)
    routine = summary["events"] - summary["notable"]
    assert (f"events {summary['events']}: {summary['notable']} notable ({summary['high']} "
            f"high) in the table below, {routine} routine") in text
    assert f"notable behaviour: {summary['notable']} events in {len(groups)} rows" in text
    table_rows = [line for line in text.splitlines() if "in-process" in line]
    assert len(table_rows) == len(groups)


def test_pipe_fds_are_descriptors_not_file_reads():
    require("bwrap")
    report = build_report(detain.run(code=JOB, backend="bwrap", min_level=2))
    fds = [e for e in report["events"] if e["category"] == "fd"]
    assert len(fds) >= 2 and all(e["severity"] == "info" and not is_notable(e) for e in fds)
    assert all(re.fullmatch(r"fd \d+ \(an open descriptor such as a pipe, not a path\)",
                            e["summary"]) for e in fds)
    reads = [e for e in report["events"] if e["category"].startswith("file-")]
    assert not [e for e in reads if re.fullmatch(r"open \d+", e["summary"])], reads
    assert not re.search(r"\b(open|fd) \d", _screen(report))  # routine: not listed
    sarif = json.loads(render(report, ".sarif"))
    texts = [r["message"]["text"] for run in sarif["runs"] for r in run["results"]]
    assert texts and not [t for t in texts if re.match(r"(open|fd) \d", t)]
    page = render(report, ".html")  # on the timeline, as info marks only
    assert not re.search(r"open \d", page)
    assert re.search(r"title=\"[^\"]* fd \d+ \(an open descriptor", page)


def test_a_cut_list_says_how_many_more():
    require("bwrap")
    code = f"for i in range({ROWS + 7}):\n    open(f'w{{i}}', 'w').close()\n"
    report = build_report(detain.run(code=code, backend="bwrap", min_level=2))
    assert len(grouped(report["events"])) == ROWS + 7
    assert "… 7 more rows (see --json / --report)" in _screen(report)
    assert more(0) is None and duration(1.0147) == "1.01 s"


def test_scan_claims_nothing_about_a_run(tmp_path):
    out = tmp_path / "scan.html"
    done = detain_cli("scan", "--no-bandit", "--report", str(out), str(FIXTURE), timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    text = done.stderr.decode()
    assert re.search(r"static findings \d+ \(\d+ high\)", text)
    assert "confirmed" not in text and "predicted" not in text
    assert not re.search(r"┃\s*run\s*┃", text)  # no run-time column either
    page = out.read_text()
    assert "confirmed at run time" not in page and "nothing: a static scan only" in page


def test_selftest_says_restricted_is_not_comparable_and_venv_warns_once(capfd):
    require("restricted")
    require("venv")
    targets, _ = resolve(["restricted", "venv"])
    probes = [p for p in PROBES if p.id in ("filesystem.home-secret", "filesystem.shadow")]
    with Session() as session:
        reports = [run_target(t, session, probes=probes) for t in targets]
    restricted, venv = reports
    assert restricted.not_comparable and "import os" in restricted.not_comparable
    assert all(v.status == NOT_APPLICABLE for v in restricted.verdicts.values())
    assert venv.not_comparable is None
    assert capfd.readouterr().err.count("isolates dependencies only") == 1
    screen = io.StringIO()
    Console(file=screen, width=200).print(matrix(reports))
    assert "not comparable" in screen.getvalue()
    assert any(line.startswith("restricted: not comparable") for line in escapes(reports))
    row = report.to_dict(reports, {})["backends"][0]
    assert row["comparable"] is False and row["judged"] == 0
