"""Tie behaviour events to the pytest test that was running when they happened.

The guest's pytest plugin writes a timeline: one line per test with its start and end on
the wall clock and the monotonic clock. Events observed on the host (the proxy's, with a
wall-clock `ts`) are matched by wall time. Audit-hook events carry `t`, seconds since the
hook started, on the guest's monotonic clock; the timeline's calibration line holds the
monotonic time just before the driver imported pytest, and the hook's `import pytest`
event the same instant as `t`, which gives the offset between the two.

The timeline comes from inside the sandbox: it is parsed with caps and type checks, and
the attribution it yields has the standing of in-process evidence.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

TIMELINE_CAP = 4 << 20
MAX_TESTS = 20000
NODEID_CAP = 500


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def read_timeline(path: Path) -> tuple[float | None, list[dict[str, Any]]]:
    """(calibration monotonic time, tests) from the guest's timeline file, if any."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(TIMELINE_CAP)
    except OSError:
        return None, []
    calibration, tests = None, []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        if record.get("calibrate") == "pytest" and calibration is None:
            calibration = _number(record.get("mono"))
            continue
        nodeid = record.get("nodeid")
        times = [_number(record.get(k)) for k in ("start", "end", "start_mono", "end_mono")]
        if not isinstance(nodeid, str) or None in times or len(tests) >= MAX_TESTS:
            continue
        outcome = record.get("outcome")
        tests.append({"nodeid": nodeid[:NODEID_CAP],
                      "outcome": outcome if outcome in ("passed", "failed", "skipped",
                                                        "error") else "unknown",
                      "start": times[0], "end": times[1], "start_mono": times[2],
                      "end_mono": times[3]})
    return calibration, sorted(tests, key=lambda t: t["start_mono"])


class _Windows:
    """Test windows on one clock, for lookup by instant."""

    def __init__(self, tests: list[dict[str, Any]], start: str, end: str) -> None:
        self.tests = sorted(tests, key=lambda t: t[start])
        self.starts = [t[start] for t in self.tests]
        self.end = end

    def find(self, instant: float) -> dict[str, Any] | None:
        index = bisect.bisect_right(self.starts, instant) - 1
        if index >= 0 and instant <= self.tests[index][self.end]:
            return self.tests[index]
        return None


def _clock_offset(events: list[dict[str, Any]], calibration: float | None) -> float | None:
    if calibration is None:
        return None
    for event in events:
        if (event.get("event") == "import" and event.get("detail", {}).get("module") == "pytest"
                and _number(event.get("t")) is not None):
            return calibration - event["t"]
    return None


def attribute(behaviour: dict[str, Any], calibration: float | None,
              tests: list[dict[str, Any]]) -> None:
    """Set `test` on every event that happened during a test; add a per-test summary."""
    events = behaviour.setdefault("events", [])
    wall = _Windows(tests, "start", "end")
    mono = _Windows(tests, "start_mono", "end_mono")
    offset = _clock_offset(events, calibration)
    counts: dict[str, int] = {}
    for event in events:
        found = None
        if _number(event.get("ts")) is not None:
            found = wall.find(event["ts"])
        elif offset is not None and _number(event.get("t")) is not None:
            found = mono.find(event["t"] + offset)
        event["test"] = found["nodeid"] if found else None
        if found:
            counts[found["nodeid"]] = counts.get(found["nodeid"], 0) + 1
    behaviour["tests"] = [{"nodeid": t["nodeid"], "outcome": t["outcome"],
                           "seconds": round(t["end"] - t["start"], 4),
                           "events": counts.get(t["nodeid"], 0)} for t in tests]
    behaviour["test_attribution"] = ("wall clock (host events)" if offset is None
                                     else "wall clock (host events), hook clock aligned on "
                                          "`import pytest` (in-process events)")
