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
from .events import KERNEL, with_flags
from .excerpt import excerpt
from .kernel_trace import parse_trace
from .places import Places, same_file
from .verdict import allowed_of, verdict

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


def build_report(result: Result, scan: dict[str, Any] | None = None,
                 relative_to: str | None = None, judge: bool = True) -> dict[str, Any]:
    """The report document; `scan` is scan.scan()'s output, or None when none ran.
    Event files under `relative_to` (a dir shown to the job, such as the package's site)
    are named relative to it, as the scan names them. `judge=False` leaves the verdict
    (None) to the caller, which first sets detain's own events apart: judging marks events
    (a signal's event is high), so it is done once, on what the verdict is about."""
    behaviour = result.behaviour or {}
    events = [dict(e, detail=dict(e["detail"])) for e in behaviour.get("events", [])]
    for event in events if relative_to else ():
        if isinstance(event.get("file"), str) and event["file"].startswith(relative_to):
            event["file"] = event["file"][len(relative_to):]
    kernel = parse_trace(result.trace)
    events += runtime_events(result) + kernel.events
    integrity = with_flags(behaviour.get("integrity", {"flags": []}), kernel.flags)
    static = scan or {"ran": False, "findings": [], "errors": []}
    findings = [dict(f) for f in static.get("findings", [])]
    crosscheck(findings, events, scanned=bool(static.get("ran")), root=static.get("root"))
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
        "verdict": verdict(events, allowed_of(result.policy), integrity,
                           "outside_trace" in result.assurance) if judge else None,
        "integrity": integrity,
    })


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


HEADER = ("$schema", "schema_version", "tool", "created", "host", "summary")


def combine(reports: list[dict[str, Any]], job: dict[str, Any],
            verdict_: dict[str, Any]) -> dict[str, Any]:
    """One report document for several runs of one subject (`detain package`'s phases):
    the first run's policy, backend and outcome, every run's events (each keeps its
    `phase`), a static finding confirmed when any run confirmed it, and one verdict."""
    first = reports[0]
    findings = [dict(f) for f in first["static"]["findings"]]
    for index, finding in enumerate(findings):
        by = [s for r in reports for s in r["static"]["findings"][index].get("confirmed_by",
                                                                              [])]
        finding.update(confirmed_by=by[:20], confirmed=bool(by))
    flags = [f for r in reports for f in r["integrity"].get("flags", [])]
    return _assemble({
        **{k: v for k, v in first.items() if k not in HEADER}, "job": job,
        "static": {**first["static"], "findings": findings},
        "events": [e for r in reports for e in r["events"]],
        "timings": {**first["timings"], "wall_seconds": round(sum(
            r["timings"]["wall_seconds"] or 0 for r in reports), 4)},
        "integrity": {**first["integrity"], "flags": flags, "flags_total": sum(
            r["integrity"].get("flags_total", 0) for r in reports), **_complete(reports)},
        "verdict": verdict_})


def _complete(reports: list[dict[str, Any]]) -> dict[str, bool]:
    """Several runs are complete only when each one is (a run without the verdict is not)."""
    if "complete" not in reports[0]["integrity"]:
        return {}
    return {"complete": all(r["integrity"].get("complete") is True for r in reports)}


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
               scanned: bool, root: str | None = None) -> None:
    """Mark findings the run confirmed and notable events no finding predicted.

    A finding and an event of its category match per line (places.py): the same file, and
    the same line, statement or function. With no static scan, nothing is "unpredicted";
    after a scan that found nothing, every notable event is. `root` is where the scanned
    files are, to find statements and functions in (only exact lines without it).
    """
    places = Places(root)

    def match(finding: dict[str, Any], event: dict[str, Any]) -> bool:
        return (event["category"] == finding["category"]
                and same_file(finding["file"], event.get("file"))
                and places.near(finding["file"], finding["line"], event.get("line")))

    for finding in findings:
        finding["confirmed_by"] = [e["seq"] for e in events if match(finding, e)][:20]
        finding["confirmed"] = bool(finding["confirmed_by"])
    for event in events:
        if event["category"] not in NOTABLE or event["provenance"] == KERNEL:
            event["predicted"] = None
            continue
        event["predicted"] = any(match(f, event) for f in findings) if scanned else None


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
