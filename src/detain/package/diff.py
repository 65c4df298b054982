"""`--against`: behaviour that is new in one version compared with another.

Real supply-chain attacks showed up as a *change*: a release that suddenly contacts a new
host, writes somewhere new, or starts a process. Each phase's events are reduced to a set
of such facts per kind, with the version strings folded out of paths, and the newer
report's facts that the older one lacks are listed.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = {"network": "hosts", "file-write": "files", "process": "processes", "native": "native"}


def _fact(event: dict[str, Any], versions: list[str]) -> str:
    detail = event.get("detail", {})
    if event["event"] == "proxy.connect":
        text = f"{detail.get('host')}:{detail.get('port')}"
    else:
        text = str(next((detail[k] for k in ("host", "address", "url", "path", "executable",
                                             "command", "library") if detail.get(k)),
                        event.get("summary", "")))
    for version in versions:
        if version:
            text = text.replace(version, "{version}")
    return text


def facts(report: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    """phase → kind → facts seen in that phase."""
    versions = _versions(report)
    found: dict[str, dict[str, set[str]]] = {}
    for phase in report["phases"]:
        kinds = found.setdefault(phase["phase"], {k: set() for k in KINDS.values()})
        for event in phase["report"]["events"]:
            kind = KINDS.get(event["category"])
            if kind:
                kinds[kind].add(_fact(event, versions))
    return found


def _versions(report: dict[str, Any]) -> list[str]:
    match = re.search(r"-(\d[^-]*?)(?:-|\.tar|\.zip|\.whl|$)", report["fetch"]["artifact"])
    spec_version = report["spec"].partition("==")[2]
    return sorted({v for v in (spec_version, match.group(1) if match else "") if v},
                  key=len, reverse=True)


def diff(newer: dict[str, Any], older: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """What `newer` did that `older` did not, per phase and kind (empty kinds left out)."""
    new_facts, old_facts = facts(newer), facts(older)
    result: dict[str, dict[str, list[str]]] = {}
    for phase, kinds in new_facts.items():
        before = old_facts.get(phase, {})
        added = {kind: sorted(items - before.get(kind, set())) for kind, items in kinds.items()}
        added = {kind: items for kind, items in added.items() if items}
        if added:
            result[phase] = added
    return result
