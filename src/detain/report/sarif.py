"""SARIF 2.1.0: static findings and runtime behaviour as results CI and code hosts show.

Two runs in one log: the static pre-scan (detain's checks and Bandit's, each rule under its
tool's id) and the sandboxed run (one rule per behaviour event kind). Runtime results carry
their provenance and whether a static finding predicted them; findings carry whether the
run confirmed them.
"""

from __future__ import annotations

from typing import Any

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {"high": "error", "medium": "warning", "low": "note", "info": "note",
          "undefined": "note"}


def _location(file: str | None, line: int | None) -> list[dict[str, Any]]:
    if not file:
        return []
    region = {"startLine": line} if isinstance(line, int) and line >= 1 else {}
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(file)}}
    if region:
        physical["region"] = region
    return [{"physicalLocation": physical}]


def _uri(file: str) -> str:
    """A relative URI reference; pseudo-files such as <string> are percent-encoded."""
    from urllib.parse import quote

    return quote(file.lstrip("/") if not file.startswith("<") else file, safe="/._-~")


def _static_run(report: dict[str, Any]) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for finding in report["static"]["findings"]:
        rules.setdefault(finding["id"], {
            "id": finding["id"], "name": str(finding.get("name") or finding["rule"]),
            "shortDescription": {"text": finding["message"][:200]},
            "properties": {"tool": finding["tool"], "category": finding["category"]}})
        results.append({
            "ruleId": finding["id"], "level": LEVELS.get(finding["severity"], "note"),
            "message": {"text": finding["message"]
                        + (" (confirmed at run time)" if finding.get("confirmed") else "")},
            "locations": _location(finding["file"], finding["line"]),
            "properties": {"severity": finding["severity"],
                           "confidence": finding["confidence"],
                           "confirmed": bool(finding.get("confirmed"))}})
    return {"tool": {"driver": {"name": "detain-scan", "version": report["tool"]["version"],
                                "informationUri": "https://detain.invalid/",
                                "rules": list(rules.values())}},
            "results": results}


def _dynamic_run(report: dict[str, Any]) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for event in report["events"]:
        if event["category"] in ("import", "fd"):  # routine: no result a reviewer acts on
            continue
        rule = f"runtime/{event['category']}/{event['event']}"
        rules.setdefault(rule, {"id": rule, "name": event["event"],
                                "shortDescription": {"text": f"{event['category']} "
                                                     f"behaviour: {event['event']}"}})
        text = event["summary"]
        if event.get("suspect"):
            text += f" [suspect: {event['suspect']}]"
        results.append({
            "ruleId": rule, "level": LEVELS.get(event["severity"], "note"),
            "message": {"text": text}, "locations": _location(event["file"], event["line"]),
            "properties": {"provenance": event["provenance"], "t": event["t"],
                           "seq": event["seq"], "predicted": event.get("predicted")}})
    outcome = report["outcome"]
    invocation = {"executionSuccessful": outcome["error"] is None,
                  "exitCode": outcome["status"],
                  "properties": {"backend": report["backend"]["name"],
                                 "level": report["backend"]["level"],
                                 "integrity": report["integrity"].get("flags", []),
                                 "verdict": report.get("verdict")}}
    return {"tool": {"driver": {"name": "detain-run", "version": report["tool"]["version"],
                                "informationUri": "https://detain.invalid/",
                                "rules": list(rules.values())}},
            "invocations": [invocation], "results": results}


def to_sarif(report: dict[str, Any]) -> dict[str, Any]:
    runs = []
    if report["static"]["ran"]:
        runs.append(_static_run(report))
    if report.get("backend", {}).get("name"):
        runs.append(_dynamic_run(report))
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": runs}
