"""One self-contained HTML page: summary, timeline, behaviour, findings, integrity.

No script and no external asset: the page's Content-Security-Policy forbids both, so even a
string from the sandbox that slipped past escaping could not load or run anything. Every
value is escaped with html.escape. The timeline is plain positioned boxes (CSS only).
"""

from __future__ import annotations

import html
from typing import Any

from .terminal import grouped

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
COLORS = {"high": "#c0392b", "medium": "#d68910", "low": "#2e86c1", "info": "#95a5a6"}
TIMELINE_CAP = 2000
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
.summary{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}
.timeline{position:relative;height:120px;background:#fff;border:1px solid #ddd;margin:8px 0}
.tick{position:absolute;bottom:0;width:3px;border-radius:1px}
.axis{display:flex;justify-content:space-between;font-size:12px;color:#666}
table{border-collapse:collapse;background:#fff;width:100%}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;
 word-break:break-all}
.high{color:#c0392b;font-weight:bold} .medium{color:#d68910} .suspect{color:#8e44ad}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _cards(report: dict[str, Any]) -> str:
    summary, outcome = report["summary"], report["outcome"]
    backend = report.get("backend") or {}
    cards = [("backend", f"{backend.get('name') or '-'} (L{backend.get('level', '-')})"),
             ("status", outcome.get("status")), ("wall s", report["timings"]["wall_seconds"]),
             ("events", summary["events"]), ("notable", summary["notable"]),
             ("high", summary["high"]), ("dropped", summary["dropped"]),
             ("suspect", summary["suspect"]), ("static findings", summary["findings"]),
             ("confirmed", summary["confirmed"]), ("unpredicted", summary["unpredicted"])]
    return "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in cards)


def _timeline(report: dict[str, Any]) -> str:
    events = [e for e in report["events"] if isinstance(e.get("t"), (int, float))]
    end = max([e["t"] for e in events] + [report["timings"]["wall_seconds"] or 0, 1e-3])
    ticks = []
    for event in events[:TIMELINE_CAP]:
        left = min(99.6, 100 * event["t"] / end)
        height = {"high": 100, "medium": 70, "low": 45}.get(event["severity"], 25)
        ticks.append(f'<div class="tick" style="left:{left:.2f}%;height:{height}%;'
                     f'background:{COLORS.get(event["severity"], "#999")}" '
                     f'title="{_e(event["t"])} s {_e(event["summary"])}"></div>')
    return (f'<div class="timeline" id="timeline-bar">{"".join(ticks)}</div>'
            f'<div class="axis"><span>0 s</span><span>{end:.3f} s</span></div>')


def _rows(report: dict[str, Any]) -> str:
    rows = []
    for group in grouped(report["events"]):
        where = f"{group['file']}:{group['line']}" if group.get("file") else ""
        flag = f' <span class="suspect">suspect: {_e(group["suspect"])}</span>' \
            if group.get("suspect") else ""
        rows.append(f'<tr><td class="{_e(group["severity"])}">{_e(group["severity"])}</td>'
                    f'<td>{_e(group["t"])}</td><td>{_e(group["category"])}</td>'
                    f'<td>{_e(group["summary"])}{flag}</td><td>{_e(where)}</td>'
                    f'<td>{_e(group["count"])}</td><td>{_e(group["provenance"])}</td></tr>')
    return "".join(rows)


def _findings(report: dict[str, Any]) -> str:
    return "".join(
        f'<tr><td class="{_e(f["severity"])}">{_e(f["severity"])}</td><td>{_e(f["id"])}</td>'
        f'<td>{_e(f["message"])}</td><td>{_e(f["file"])}:{_e(f["line"])}</td>'
        f'<td>{"confirmed" if f.get("confirmed") else ""}</td></tr>'
        for f in report["static"]["findings"])


def to_html(report: dict[str, Any]) -> str:
    flags = "".join(f"<li>{_e(flag)}</li>" for flag in report["integrity"].get("flags", []))
    job = report.get("job") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>detain report</title><style>{STYLE}</style></head><body>
<h1>detain report: {_e(job.get("kind"))} {_e(str(job.get("target", ""))[:120])}</h1>
<section id="summary"><h2>Summary</h2><div class="summary">{_cards(report)}</div></section>
<section id="timeline"><h2>Timeline</h2>{_timeline(report)}</section>
<section id="behaviour"><h2>Notable behaviour</h2><table>
<tr><th>severity</th><th>t (s)</th><th>category</th><th>what</th><th>where</th><th>n</th>
<th>provenance</th></tr>{_rows(report)}</table></section>
<section id="findings"><h2>Static findings</h2><table><tr><th>severity</th><th>rule</th>
<th>message</th><th>where</th><th>run</th></tr>{_findings(report)}</table></section>
<section id="integrity"><h2>Integrity</h2><ul>{flags or "<li>no problems seen</li>"}</ul>
<p>Events marked in-process came from inside the job's own process, which could forge
them; kernel/runtime events were observed from outside.</p></section>
</body></html>
"""
