"""The containment matrix for a terminal: probes down, backends across, scores below."""

from __future__ import annotations

from rich.table import Table

from ..report.safe_text import visible
from .model import CONTAINED, ERROR, ESCAPED, PROBES
from .report import CONTAINING_LEVEL, score
from .runner import TargetReport

STYLE = {CONTAINED: "[green]contained[/]", ESCAPED: "[bold red]ESCAPED[/]",
         ERROR: "[yellow]error[/]"}


def matrix(reports: list[TargetReport]) -> Table:
    table = Table(title="detain selftest — judged from the host", show_lines=False)
    table.add_column("probe")
    for report in reports:
        table.add_column(f"{report.target.name}\n(level {report.target.level})",
                         justify="center")
    group = None
    for probe in PROBES:
        if probe.group != group:
            group = probe.group
            table.add_section()
        cells = []
        for report in reports:
            verdict = report.verdicts.get(probe.id)
            cells.append("" if verdict is None else STYLE.get(verdict.status, "[dim]n/a[/]"))
        table.add_row(probe.id + (" [dim](gated)[/]" if probe.dangerous else ""), *cells)
    table.add_section()
    table.add_row("[bold]score[/] (contained / judged)",
                  *(_score_cell(r) for r in reports))
    table.add_row("seconds", *(f"{r.seconds:.1f}" for r in reports))
    return table


def _score_cell(report: TargetReport) -> str:
    if report.not_comparable:  # every probe stopped before its attack: no score at all
        return "[yellow]not comparable[/]"
    contained, judged = score(report)
    colour = "green" if report.clean else ("red" if report.target.level >= CONTAINING_LEVEL
                                           else "yellow")
    return f"[{colour}]{contained}/{judged}[/]"


def escapes(reports: list[TargetReport]) -> list[str]:
    """One line per escape or error, and per backend whose score is not comparable, for
    below the matrix; a detail may quote the job."""
    lines = []
    for report in reports:
        if report.not_comparable:
            lines.append(f"{report.target.name}: {visible(report.not_comparable)}")
        for probe_id, verdict in report.verdicts.items():
            if verdict.status in (ESCAPED, ERROR):
                lines.append(f"{report.target.name} {probe_id}: {verdict.status}: "
                             f"{visible(verdict.detail)}")
    return lines
