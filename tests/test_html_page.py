"""The HTML report holds what the README promises, as a browser shows it (issue 16): date,
host and detain version, the assurance, the policy and limits, stdout and stderr excerpts
(escaped), a legend for the timeline, the unpredicted marker, durations with units.

A real bwrap run and a real static scan; headless Chromium builds the DOM."""

from __future__ import annotations

import html
import platform
import re

import detain
from browser import dom
from conftest import require
from detain.report.build import build_report
from detain.report.excerpt import HEAD_LINES, TAIL_LINES
from detain.report.human import duration
from detain.report.output import render
from detain.scan import scan

JOB = """
import sys
print("<b>bold</b>\\x1b[31m red \\u202e evil")
for i in range(100):
    print("line", i)
print("to stderr: & done", file=sys.stderr)
open("written.txt", "w").close()
"""


def _page(tmp_path):
    require("bwrap")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    result = detain.run(script, backend="bwrap", min_level=2)
    assert result.status == 0, result.stderr
    report = build_report(result, scan(script))
    page = tmp_path / "report.html"
    page.write_text(render(report, ".html"))
    return report, dom(page, tmp_path)


def test_the_page_holds_everything_the_readme_promises(tmp_path):
    report, shown = _page(tmp_path)
    # date, host, detain version
    assert report["created"] in shown and detain.__version__ in shown
    assert html.escape(platform.node()) in shown
    # what was in force, and the policy with its limits
    assert 'id="assurance"' in shown and "What was in force" in shown
    assert "<th>seccomp</th><td>yes</td>" in shown and "<th>no_new_privs</th>" in shown
    assert "<th>limits: memory</th><td>512M total" in shown
    assert 'id="policy"' in shown and "<th>limits: timeout</th><td>30.00 s</td>" in shown
    # the timeline's legend and the unpredicted marker (the write no finding foresaw)
    assert "Each mark is one event" in shown and "a cap on top: unpredicted" in shown
    assert re.search(r'class="tick unpredicted"', shown)
    assert re.search(r'open written\.txt <span class="unpredicted">unpredicted</span>', shown)
    # durations with units, never a bare "1.0147"
    wall = report["timings"]["wall_seconds"]
    assert f"wall time<b>{duration(wall)}</b>" in shown and re.search(r"\d (ms|s)</b>", shown)
    assert f"<b>{wall}</b>" not in shown


def test_output_excerpts_are_capped_and_escaped(tmp_path):
    _, shown = _page(tmp_path)
    stdout = shown.split('<h3>stdout', 1)[1].split("</pre>", 1)[0]
    # markup as text, terminal controls and bidi overrides as visible escapes
    assert "&lt;b&gt;bold&lt;/b&gt;\\x1b[31m red \\u202e evil" in stdout
    assert "\x1b" not in shown and "\u202e" not in shown
    omitted = 101 - HEAD_LINES - TAIL_LINES
    assert f"… {omitted} lines not shown …" in stdout
    assert "line 0\n" in stdout and "line 99" in stdout and "line 50\n" not in stdout
    stderr = shown.split('<h3>stderr', 1)[1].split("</pre>", 1)[0]
    assert "to stderr: &amp; done" in stderr
