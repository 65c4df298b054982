"""Assemble the one report document (schema.json) from a Result and a static scan.

Also adds what the host itself saw (wall-clock kills, the kernel's OOM killer, CPU limit
signals, refused forks) and what gVisor's kernel traced as `kernel/runtime` events, which
the job cannot forge, and cross-checks static findings against runtime behaviour.
"""

from __future__ import annotations

import datetime
import platform
import signal
from typing import Any

from .. import __version__
from ..result import Result
from .events import KERNEL
from .excerpt import excerpt
from .kernel_trace import parse_trace

SCHEMA_VERSION = "1.1"
SCHEMA_ID = "https://detain.invalid/schemas/report-1.1.json"
NOTABLE = ("network", "process", "native", "code", "file-write", "hook", "deserialize",
           "runtime")


def is_notable(event: dict[str, Any]) -> bool:
    """What the reports single out and count as notable: an event of a NOTABLE category,
    or any high-severity one (a read of ~/.ssh is a file-read, yet high). Every high event
    is notable, so "N notable (M high)" adds up, and so do the rows that list them."""
    return event["category"] in NOTABLE or event["severity"] == "high"


FAIL_ON = {
    "network": lambda e: e["category"] == "network",
    "write": lambda e: e["category"] == "file-write",
    "subprocess": lambda e: e["category"] == "process",
    "native": lambda e: e["category"] == "native",
    "high": lambda e: e["severity"] == "high",
}


def runtime_events(result: Result) -> list[dict[str, Any]]:
    """What the host observed from outside the sandbox, as events."""
    seen = []
    if result.timed_out:
        seen.append(("wall-clock", "killed at the wall-clock limit "
                     f"({result.policy.get('limits', {}).get('timeout')} s)"))
    if result.limit == "memory" and any("OOM" in n for n in result.notes):
        seen.append(("oom-kill", "the kernel's OOM killer ended the job (cgroup memory limit)"))
    if result.limit == "cpu":
        seen.append(("cpu-limit", "CPU time limit hit (RLIMIT_CPU signal from the kernel)"))
    seen += [("pids-limit", note) for note in result.notes
             if note.startswith("process limit reached")]
    if result.signal is not None and not result.timed_out:
        try:
            name = signal.Signals(result.signal).name
        except ValueError:
            name = f"signal {result.signal}"
        seen.append(("signal", f"the job's main process ended by {name}"))
    return [{"seq": None, "t": result.wall_seconds, "event": event, "category": "runtime",
             "severity": "high" if event != "signal" else "medium", "file": None, "line": None,
             "detail": {"message": message}, "summary": message, "provenance": KERNEL,
             "suspect": None} for event, message in seen]


def build_report(result: Result, scan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report document; `scan` is scan.scan()'s output, or None when none ran."""
    behaviour = result.behaviour or {}
    events = [dict(e, detail=dict(e["detail"])) for e in behaviour.get("events", [])]
    kernel = parse_trace(result.trace)
    events += runtime_events(result) + kernel.events
    static = scan or {"ran": False, "findings": [], "errors": []}
    findings = [dict(f) for f in static.get("findings", [])]
    crosscheck(findings, events, scanned=bool(static.get("ran")))
    data = result.to_dict()
    return _assemble({
        "job": result.job, "policy": result.policy,
        "backend": {"name": result.backend, "level": result.level,
                    "choice": result.backend_choice},
        "assurance": result.assurance,
        "output": {"stdout": excerpt(result.stdout, result.stdout_truncated),
                   "stderr": excerpt(result.stderr, result.stderr_truncated)},
        "outcome": {key: data[key] for key in (
            "status", "exit_code", "signal", "signal_name", "timed_out", "limit", "error",
            "stdout_truncated", "stderr_truncated", "copied_out", "copy_out_error", "notes")},
        "limits_hit": [e["event"] for e in events if e["category"] == "runtime"
                       and e["event"] != "signal"] or ([result.limit] if result.limit else []),
        "timings": {"wall_seconds": result.wall_seconds, "cpu_seconds": result.cpu_seconds,
                    "peak_memory_bytes": result.peak_memory_bytes,
                    "scan_seconds": static.get("seconds")},
        "static": {"ran": bool(static.get("ran")), "root": static.get("root"),
                   "tools": static.get("tools", []), "findings": findings,
                   "errors": static.get("errors", [])},
        "audit": bool(behaviour.get("audit")),
        "events": events,
        "integrity": _with_flags(behaviour.get("integrity", {"flags": []}), kernel.flags),
    })


def _with_flags(integrity: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    """The channel's integrity section plus the kernel trace's own flags."""
    if not flags:
        return integrity
    total = integrity.get("flags_total", len(integrity.get("flags", []))) + len(flags)
    return {**integrity, "flags": [*integrity.get("flags", []), *flags], "flags_total": total}


def _assemble(body: dict[str, Any]) -> dict[str, Any]:
    """The header every report carries, the body, and the summary computed from it."""
    report = {"$schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
              "tool": {"name": "detain", "version": __version__},
              "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "host": {"name": platform.node(),
                       "system": f"{platform.system()} {platform.release()}"},
              **body}
    report["summary"] = summarise(report)
    return report


def scan_report(scan: dict[str, Any]) -> dict[str, Any]:
    """A report holding only a static scan (`detain scan`): same schema, nothing ran."""
    findings = [dict(f, confirmed=False, confirmed_by=[]) for f in scan["findings"]]
    return _assemble({
        "job": {"kind": "scan", "target": scan["root"], "args": []}, "policy": {},
        "backend": {"name": None, "level": None}, "assurance": {},
        "outcome": {"status": 0, "exit_code": None, "signal": None, "signal_name": None,
                    "timed_out": False, "limit": None, "error": None,
                    "stdout_truncated": False, "stderr_truncated": False, "copied_out": [],
                    "copy_out_error": None,
                    "notes": []},
        "limits_hit": [], "timings": {"wall_seconds": 0.0, "cpu_seconds": 0.0,
                                      "peak_memory_bytes": 0, "scan_seconds": scan["seconds"]},
        "static": {"ran": True, "root": scan["root"], "tools": scan["tools"],
                   "findings": findings, "errors": scan["errors"]},
        "audit": False, "events": [], "integrity": {"flags": []},
    })


def crosscheck(findings: list[dict[str, Any]], events: list[dict[str, Any]],
               scanned: bool) -> None:
    """Mark findings the run confirmed and notable events no finding predicted.

    A finding is confirmed by an event of its category in the same file (on its line when
    the event has one there, else anywhere in the file: a call site and the line that
    triggers it often differ). With no static scan, nothing is "unpredicted"; after a scan
    that found nothing, every notable event is.
    """
    for finding in findings:
        matches = [e for e in events if e["category"] == finding["category"]
                   and e.get("file") == finding["file"]]
        exact = [e for e in matches if e.get("line") == finding["line"]]
        finding["confirmed_by"] = [e["seq"] for e in (exact or matches)][:20]
        finding["confirmed"] = bool(finding["confirmed_by"])
    for event in events:
        if event["category"] not in NOTABLE or event["provenance"] == KERNEL:
            event["predicted"] = None
            continue
        event["predicted"] = any(
            f["category"] == event["category"] and f["file"] == event.get("file")
            for f in findings) if scanned else None


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    events = report["events"]
    counts: dict[str, int] = {}
    for event in events:
        counts[event["category"]] = counts.get(event["category"], 0) + 1
    findings = report["static"]["findings"]
    return {
        "events": len(events), "by_category": counts,
        "notable": sum(1 for e in events if is_notable(e)),
        "high": sum(1 for e in events if e["severity"] == "high"),
        "findings": len(findings),
        "findings_high": sum(1 for f in findings if f["severity"] == "high"),
        "confirmed": sum(1 for f in findings if f.get("confirmed")),
        "unpredicted": sum(1 for e in events if e.get("predicted") is False),
        "suspect": sum(1 for e in events if e.get("suspect")),
        "dropped": report["integrity"].get("dropped_total", 0),
        "integrity_flags": report["integrity"].get("flags_total",
                                                   len(report["integrity"].get("flags", []))),
    }


def fail_on(report: dict[str, Any], conditions: list[str]) -> list[str]:
    """Which --fail-on conditions the report meets (static high/native findings count too)."""
    met = []
    for condition in conditions:
        hit = any(FAIL_ON[condition](e) for e in report["events"])
        if condition in ("high", "native"):
            hit = hit or any(f["severity"] == "high" if condition == "high"
                             else f["category"] == "native"
                             for f in report["static"]["findings"])
        if hit:
            met.append(condition)
    return met
