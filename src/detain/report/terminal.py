"""The terminal view: a summary panel and the notable behaviour, grouped and de-duplicated.

The report is made `visible` (safe_text) as a whole before anything is laid out, so no
field, present or added later, can carry a terminal escape, a CR or a bidi override from
the job to the person; strings set into rich markup are markup-escaped as well, and rich's
emoji codes are off. A job can therefore neither style, hide nor fake lines of the report.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .build import is_notable
from .human import MORE_HINT, duration, more
from .safe_text import visible_tree

STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}
ROWS = 40


def _summary(report: dict[str, Any]) -> Panel:
    outcome, summary = report["outcome"], report["summary"]
    backend = report.get("backend") or {}
    lines = []
    if backend.get("name"):
        lines.append(f"backend [bold]{escape(backend['name'])}[/] (level {backend['level']})"
                     f"  status [bold]{outcome['status']}[/]"
                     f"  wall {duration(report['timings']['wall_seconds'])}"
                     f"  cpu {duration(report['timings']['cpu_seconds'])}")
        choice = backend.get("choice") or {}
        if choice.get("reason"):  # which backend ran, and why (backends/auto.py)
            lines.append(f"[dim]why {escape(backend['name'])}:[/] {escape(choice['reason'])}; "
                         f"expected cost {escape(choice.get('expected_cost', ''))}")
        lines.append(_counts(summary))
    if report["static"]["ran"]:
        lines.append(_static_counts(summary, ran=bool(backend.get("name"))))
    held = (report.get("assurance") or {}).get("limits") or {}
    weaker = [f"{name} {text}" for name, text in held.items()
              if isinstance(text, str) and name in ("memory", "disk") and "total" not in text]
    if weaker:  # what a reader would otherwise take for a total
        lines.append(f"[yellow]limits:[/] {escape('; '.join(weaker))}")
    flags = report["integrity"].get("flags", [])
    for flag in flags[:5]:
        lines.append(f"[yellow]integrity:[/] {escape(flag)}")
    if hidden := more(len(flags) - 5, "integrity flags"):
        lines.append(f"[yellow]integrity:[/] {escape(hidden)}")
    if outcome.get("error"):
        lines.append(f"[red]error:[/] {escape(outcome['error'])}")
    return Panel("\n".join(lines), title="detain report", expand=False)


def _counts(summary: dict[str, Any]) -> str:
    """Counts that add up: every high event is notable, the notable ones are the table's
    rows (summed over its n column), the rest are routine and only in the full report."""
    routine = summary["events"] - summary["notable"]
    return (f"events {summary['events']}: {summary['notable']} notable ({summary['high']} "
            f"high){' in the table below' if summary['notable'] else ''}, {routine} routine "
            f"(file reads, imports, descriptors: {MORE_HINT}); dropped {summary['dropped']}, "
            f"suspect {summary['suspect']}")


def _static_counts(summary: dict[str, Any], ran: bool) -> str:
    """The scan's counts; what the run confirmed only when something ran (`detain scan`
    runs nothing, so it has nothing to confirm)."""
    line = f"static findings {summary['findings']} ({summary['findings_high']} high)"
    if ran:
        line += (f", {summary['confirmed']} confirmed at run time, {summary['unpredicted']} "
                 "notable events no finding predicted")
    return line


def _severity(severity: str) -> str:
    return f"[{STYLE.get(severity, '')}]{escape(severity)}[/]"


def where_of(event: dict[str, Any], none: str = "") -> str:
    """file:line of an event, and the exec'd code it ran through (`via`)."""
    if not event.get("file"):
        return none
    via = event.get("via") if isinstance(event.get("via"), list) else []
    return f"{event['file']}:{event['line']}" + (f" via {', '.join(map(str, via))}" if via
                                                 else "")


def grouped(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Notable events merged by (category, what, where), with a count and first time."""
    groups: dict[tuple, dict[str, Any]] = {}
    for event in events:
        if not is_notable(event):
            continue
        key = (event["category"], event["summary"], event.get("file"), event.get("line"))
        group = groups.setdefault(key, {**event, "count": 0})
        group["count"] += 1
    order = {"high": 0, "medium": 1, "low": 2, "info": 3}
    return sorted(groups.values(), key=lambda g: (order.get(g["severity"], 4), g["t"] or 0))


def _behaviour(report: dict[str, Any]) -> Table:
    rows = grouped(report["events"])
    table = Table(title=f"notable behaviour: {report['summary']['notable']} events in "
                  f"{len(rows)} rows (n: how many)", expand=False)
    for column in ("severity", "category", "what", "where", "n", "source"):
        table.add_column(column, overflow="fold")
    for group in rows[:ROWS]:
        where = where_of(group, "-")
        source = escape(group["provenance"])
        if group.get("suspect"):
            source += " [red]suspect[/]"
        if group.get("predicted") is False:
            source += " [magenta]unpredicted[/]"
        table.add_row(_severity(group["severity"]),
                      escape(group["category"]), escape(group["summary"][:120]),
                      escape(where), str(group["count"]), source)
    table.caption = more(len(rows) - ROWS, "rows")
    return table


def _findings(report: dict[str, Any]) -> Table:
    ran = bool((report.get("backend") or {}).get("name"))
    table = Table(title="static findings", expand=False)
    for column in ("severity", "rule", "message", "where", *(("run",) if ran else ())):
        table.add_column(column, overflow="fold")
    findings = report["static"]["findings"]
    for finding in findings[:ROWS]:
        table.add_row(_severity(finding["severity"]),
                      escape(finding["id"]), escape(finding["message"][:100]),
                      escape(f"{finding['file']}:{finding['line']}"),
                      *(("confirmed" if finding.get("confirmed") else "",) if ran else ()))
    table.caption = more(len(findings) - ROWS, "findings")
    return table


def render_terminal(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the summary (to stderr unless `console` says otherwise)."""
    report = visible_tree(report)
    console = console or Console(stderr=True, emoji=False, highlight=False)
    parts: list[Any] = [_summary(report)]
    if report["events"]:
        parts.append(_behaviour(report))
    if report["static"]["findings"]:
        parts.append(_findings(report))
    console.print(Group(*parts))
