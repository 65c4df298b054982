"""The battery's results as data: JSON for tools, JUnit XML for CI, and the exit rule."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

from .model import CONTAINED, ERROR, ESCAPED, GROUPS, NOT_APPLICABLE, PROBES
from .runner import TargetReport

CONTAINING_LEVEL = 2  # backends at or above this level must let nothing out


def score(report: TargetReport) -> tuple[int, int]:
    """(contained, judged): n/a probes are not judged either way."""
    judged = len(report.verdicts) - report.count(NOT_APPLICABLE)
    return report.count(CONTAINED), judged


def failed(reports: list[TargetReport]) -> list[str]:
    """Backends of level >= 2 that let something out or could not be judged (a probe's
    error, or no probe able to run its attack at all)."""
    return [r.target.name for r in reports
            if r.target.level >= CONTAINING_LEVEL and (not r.clean or r.not_comparable)]


def to_dict(reports: list[TargetReport], unavailable: dict[str, str]) -> dict[str, Any]:
    return {
        "probes": [{"id": p.id, "group": p.group, "tries": p.tries, "dangerous": p.dangerous}
                   for p in PROBES],
        "groups": GROUPS,
        "backends": [{
            "backend": r.target.name, "level": r.target.level, "seconds": r.seconds,
            "contained": score(r)[0], "judged": score(r)[1], "escaped": r.count(ESCAPED),
            "errors": r.count(ERROR), "comparable": r.not_comparable is None,
            "not_comparable": r.not_comparable,
            "verdicts": {pid: {"status": v.status, "detail": v.detail, "seconds": v.seconds}
                         for pid, v in r.verdicts.items()},
        } for r in reports],
        "unavailable": unavailable,
        "failed": failed(reports),
    }


def to_junit(reports: list[TargetReport]) -> str:
    """One testsuite per backend, one testcase per probe: escapes fail, n/a is skipped."""
    suites = ElementTree.Element("testsuites", name="detain selftest")
    for report in reports:
        suite = ElementTree.SubElement(
            suites, "testsuite", name=f"detain.selftest.{report.target.name}",
            tests=str(len(report.verdicts)),
            failures=str(report.count(ESCAPED)), errors=str(report.count(ERROR)),
            skipped=str(report.count(NOT_APPLICABLE)), time=str(report.seconds))
        for probe_id, verdict in report.verdicts.items():
            case = ElementTree.SubElement(suite, "testcase", name=probe_id,
                                          classname=f"selftest.{report.target.name}",
                                          time=str(verdict.seconds))
            if verdict.status == ESCAPED:
                ElementTree.SubElement(case, "failure", message=verdict.detail)
            elif verdict.status == ERROR:
                ElementTree.SubElement(case, "error", message=verdict.detail)
            elif verdict.status == NOT_APPLICABLE:
                ElementTree.SubElement(case, "skipped", message=verdict.detail)
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
