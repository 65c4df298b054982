"""One self-contained HTML page: everything the report holds, for a person to read.

Header (date, host, detain version), summary, a timeline with its legend, the notable
behaviour (unpredicted and suspect marked), static findings, what was in force (the
assurance), the policy and its limits, excerpts of stdout and stderr, and integrity.

No script and no external asset: the page's Content-Security-Policy forbids both, so even a
string from the sandbox that slipped past escaping could not load or run anything. The
report is made `visible` (safe_text) as a whole first, as for the terminal, so no control
or bidi character from the job reaches the page, and every value is then escaped with
html.escape. Every element the template uses appears whatever the run did (empty tables,
empty excerpts), so a job's data can add rows and cells, never a new kind of element: the
selftest's `output-html-report` probe compares the page with a harmless run's on that rule.
The timeline is plain positioned boxes (CSS only).
"""

from __future__ import annotations

import html
import json
from typing import Any

from .human import duration, more, size
from .safe_text import visible_tree
from .terminal import grouped, where_of
from .verdict import as_html

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
COLORS = {"high": "#c0392b", "medium": "#d68910", "low": "#2e86c1", "info": "#95a5a6"}
HEIGHTS = {"high": 100, "medium": 70, "low": 45, "info": 25}
UNPREDICTED = "#8e44ad"
TIMELINE_CAP = 2000
SECONDS = ("timeout", "cpu")  # the policy's limits given in seconds
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px} h2{font-size:16px;margin-top:28px} h3{font-size:14px}
.meta{color:#555}
.summary{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}
.timeline{position:relative;height:120px;background:#fff;border:1px solid #ddd;margin:8px 0}
.tick{position:absolute;bottom:0;width:3px;border-radius:1px}
.tick.unpredicted{border-top:6px solid #8e44ad}
.axis{display:flex;justify-content:space-between;font-size:12px;color:#666}
.legend{font-size:12px;color:#444;margin:6px 0}
.swatch{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
table{border-collapse:collapse;background:#fff;width:100%}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;
 word-break:break-all}
pre{background:#fff;border:1px solid #ddd;padding:8px;white-space:pre-wrap;
 word-break:break-all;max-height:480px;overflow:auto}
.high{color:#c0392b;font-weight:bold} .medium{color:#d68910} .suspect{color:#8e44ad}
.unpredicted{color:#8e44ad;font-weight:bold} .cut{color:#888;font-style:italic}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _ran(report: dict[str, Any]) -> bool:
    """Whether anything ran (a `detain scan` report has no backend and confirms nothing)."""
    return bool((report.get("backend") or {}).get("name"))


def _header(report: dict[str, Any]) -> str:
    job, host, tool = report.get("job") or {}, report.get("host") or {}, report["tool"]
    return (f'<h1>detain report: {_e(job.get("kind"))} {_e(str(job.get("target", ""))[:120])}'
            f'</h1><p class="meta">created {_e(report.get("created"))} on host '
            f'{_e(host.get("name") or "-")} ({_e(host.get("system") or "-")}) by '
            f'{_e(tool.get("name"))} {_e(tool.get("version"))}; report schema '
            f'{_e(report.get("schema_version"))}</p>')


def _cards(report: dict[str, Any]) -> str:
    summary, outcome, timings = report["summary"], report["outcome"], report["timings"]
    backend = report.get("backend") or {}
    cards: list[tuple[str, Any]] = []
    if _ran(report):
        cards += [("backend", f"{backend.get('name')} (L{backend.get('level')})"),
                  ("status", outcome.get("status")),
                  ("wall time", duration(timings.get("wall_seconds"))),
                  ("cpu time", duration(timings.get("cpu_seconds"))),
                  ("peak memory", size(timings.get("peak_memory_bytes"))),
                  ("events", summary["events"]), ("notable", summary["notable"]),
                  ("of them high", summary["high"]),
                  ("routine", summary["events"] - summary["notable"]),
                  ("dropped", summary["dropped"]), ("suspect", summary["suspect"])]
    cards.append(("static findings", summary["findings"]))
    if _ran(report) and report["static"]["ran"]:
        cards += [("confirmed at run time", summary["confirmed"]),
                  ("unpredicted", summary["unpredicted"])]
    return "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in cards)


def _outcome(report: dict[str, Any]) -> str:
    outcome = report["outcome"]
    if not _ran(report):
        return _pairs({"ran": "nothing: a static scan only"})
    return _pairs({"exit status": outcome.get("status"), "exit code": outcome.get("exit_code"),
                   "signal": outcome.get("signal_name"), "timed out": outcome.get("timed_out"),
                   "limits hit": report.get("limits_hit"), "error": outcome.get("error"),
                   "copied out": outcome.get("copied_out"),
                   "copy-out error": outcome.get("copy_out_error"),
                   "notes": outcome.get("notes")})


def _legend() -> str:
    swatches = "".join(f'<span class="swatch" style="background:{color}"></span>{_e(name)}'
                       for name, color in COLORS.items())
    return (f'<p class="legend">Each mark is one event at the time it happened, in seconds '
            f'since the job started; its colour and height give its severity:{swatches};'
            f'<span class="swatch" style="background:{UNPREDICTED}"></span>a cap on top: '
            'unpredicted, behaviour no static finding foresaw. Hover a mark to read it.</p>')


def _timeline(report: dict[str, Any]) -> str:
    events = [e for e in report["events"] if isinstance(e.get("t"), (int, float))]
    end = max([e["t"] for e in events] + [report["timings"]["wall_seconds"] or 0, 1e-3])
    ticks = []
    for event in events[:TIMELINE_CAP]:
        left = min(99.6, 100 * event["t"] / end)
        unpredicted = " unpredicted" if event.get("predicted") is False else ""
        ticks.append(f'<div class="tick{unpredicted}" style="left:{left:.2f}%;height:'
                     f'{HEIGHTS.get(event["severity"], 25)}%;background:'
                     f'{COLORS.get(event["severity"], "#999")}" '
                     f'title="{_e(duration(event["t"]))} {_e(event["summary"])}"></div>')
    cut = more(len(events) - TIMELINE_CAP, "events not drawn") or ""
    return (f'{_legend()}<div class="timeline" id="timeline-bar">{"".join(ticks)}</div>'
            f'<div class="axis"><span>0 s</span><span>{_e(duration(end))}</span></div>'
            f'<p class="cut">{_e(cut)}</p>')


def _rows(groups: list[dict[str, Any]]) -> str:
    rows = []
    for group in groups:
        where = where_of(group)
        flag = f' <span class="suspect">suspect: {_e(group["suspect"])}</span>' \
            if group.get("suspect") else ""
        if group.get("predicted") is False:
            flag += ' <span class="unpredicted">unpredicted</span>'
        rows.append(f'<tr><td class="{_e(group["severity"])}">{_e(group["severity"])}</td>'
                    f'<td>{_e(duration(group["t"]))}</td><td>{_e(group["category"])}</td>'
                    f'<td>{_e(group["summary"])}{flag}</td><td>{_e(where)}</td>'
                    f'<td>{_e(group["count"])}</td><td>{_e(group["provenance"])}</td></tr>')
    return "".join(rows)


def _behaviour(report: dict[str, Any]) -> str:
    summary, groups = report["summary"], grouped(report["events"])
    routine = summary["events"] - summary["notable"]
    return (f'<p>{_e(summary["notable"])} notable events ({_e(summary["high"])} high) in '
            f'{_e(len(groups))} rows, repeats merged (n: how many); {_e(routine)} routine events '
            '(file reads, imports, descriptors) are only in the JSON report. '
            '<span class="unpredicted">unpredicted</span>: no static finding foresaw it.</p>'
            '<table><tr><th>severity</th><th>first at</th><th>category</th><th>what</th>'
            '<th>where</th><th>n</th><th>provenance</th></tr>'
            f'{_rows(groups)}</table>')


def _findings(report: dict[str, Any]) -> str:
    ran = _ran(report)
    rows = "".join(
        f'<tr><td class="{_e(f["severity"])}">{_e(f["severity"])}</td><td>{_e(f["id"])}</td>'
        f'<td>{_e(f["message"])}</td><td>{_e(f["file"])}:{_e(f["line"])}</td>'
        f'<td>{_e(("confirmed" if f.get("confirmed") else "not seen") if ran else "-")}</td>'
        '</tr>' for f in report["static"]["findings"])
    return ('<table><tr><th>severity</th><th>rule</th><th>message</th><th>where</th>'
            f'<th>at run time</th></tr>{rows}</table>')


def _value(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def _pairs(mapping: dict[str, Any]) -> str:
    """A two-column table; a nested mapping (limits, rlimits, cgroup) gets a row per key."""
    rows = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            rows += [(f"{key}: {sub}", inner) for sub, inner in value.items()]
        else:
            rows.append((key, value))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_value(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _assurance(report: dict[str, Any]) -> str:
    assurance = report.get("assurance") or {}
    return ("<p>Protections observed in force for this run (read inside the sandbox before "
            "the job ran, and on the host), not merely the ones asked for.</p>"
            + _pairs(assurance or {"observed": "nothing: no sandbox ran"}))


def _policy(report: dict[str, Any]) -> str:
    policy = dict(report.get("policy") or {"policy": "none: nothing ran"})
    if isinstance(policy.get("limits"), dict):  # seconds with their unit, as everywhere
        policy["limits"] = {key: duration(value) if key in SECONDS else value
                            for key, value in policy["limits"].items()}
    return ("<p>The policy the run was given; <em>limits</em> are what was asked, the "
            "assurance above says how each was enforced.</p>" + _pairs(policy))


def _excerpt(name: str, part: dict[str, Any] | None) -> str:
    part = part or {"bytes": 0, "head": [], "tail": [], "omitted_lines": 0}
    omitted = part.get("omitted_lines") or 0
    cut = f"… {omitted} lines not shown …" if omitted else ""
    note = f"{size(part.get('bytes'))}" + (", cut at the output limit"
                                           if part.get("truncated") else "")
    return (f"<h3>{_e(name)} ({_e(note)})</h3><pre>{_e(chr(10).join(part.get('head', [])))}"
            f'<span class="cut">{_e(chr(10) + cut + chr(10) if cut else "")}</span>'
            f"{_e(chr(10).join(part.get('tail', [])))}</pre>")


def _output(report: dict[str, Any]) -> str:
    output = report.get("output") or {}
    return ("<p>The first and last lines of what the job printed, control characters "
            "escaped; the whole streams are in the JSON Result (<code>--json</code>).</p>"
            + _excerpt("stdout", output.get("stdout")) + _excerpt("stderr", output.get("stderr")))


def to_html(report: dict[str, Any]) -> str:
    report = visible_tree(report)
    flags = "".join(f"<li>{_e(flag)}</li>" for flag in report["integrity"].get("flags", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>detain report</title><style>{STYLE}</style></head><body>
{_header(report)}
<section id="summary"><h2>Summary</h2>{as_html(report.get("verdict"))}
<div class="summary">{_cards(report)}</div>
<h3>Outcome</h3>{_outcome(report)}</section>
<section id="timeline"><h2>Timeline</h2>{_timeline(report)}</section>
<section id="behaviour"><h2>Notable behaviour</h2>{_behaviour(report)}</section>
<section id="findings"><h2>Static findings</h2>{_findings(report)}</section>
<section id="assurance"><h2>What was in force</h2>{_assurance(report)}</section>
<section id="policy"><h2>Policy and limits</h2>{_policy(report)}</section>
<section id="output"><h2>Output</h2>{_output(report)}</section>
<section id="integrity"><h2>Integrity</h2><ul>{flags or "<li>no problems seen</li>"}</ul>
<p>Events marked in-process came from inside the job's own process, which could forge
them; kernel/runtime events were observed from outside.</p></section>
</body></html>
"""
