"""Bandit, used as a library: the well-kept SAST half of the pre-scan.

Bandit only parses (ast) the files it is given; nothing is imported or executed. Its
findings are mapped to detain's behaviour categories so the report can say which of them
the run later confirmed, and reworded for triage (scan/triage.py).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from .triage import reword

# Bandit test id -> detain behaviour category (what the run would show if it is real).
CATEGORIES = {
    "B102": "code", "B307": "code", "B301": "deserialize", "B302": "deserialize",
    "B403": "deserialize", "B506": "deserialize", "B310": "network", "B113": "network",
    "B321": "network", "B312": "network", "B401": "network", "B402": "network",
    "B404": "process", "B602": "process", "B603": "process", "B604": "process",
    "B605": "process", "B606": "process", "B607": "process", "B609": "process",
    "B103": "file-write", "B108": "file-write",
}


def run_bandit(files: list[Path], root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Findings (detain's finding shape) and errors for the given Python files."""
    if not files:
        return [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its plugin loader's deprecation noise
        from bandit.core import config, manager

    logging.getLogger("bandit").setLevel(logging.ERROR)
    logging.getLogger("stevedore").setLevel(logging.CRITICAL)  # optional formatter plugins
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bandit = manager.BanditManager(config.BanditConfig(), "file", quiet=True)
        bandit.discover_files([str(f) for f in files])
        bandit.run_tests()
    findings = []
    for issue in bandit.get_issue_list():
        data = issue.as_dict(with_code=False)
        message, severity = reword(data["test_id"], data["issue_text"],
                                   str(data["issue_severity"]).lower())
        findings.append({
            "id": f"bandit/{data['test_id']}", "tool": "bandit", "rule": data["test_id"],
            "name": data.get("test_name"), "severity": severity,
            "confidence": str(data["issue_confidence"]).lower(),
            "category": CATEGORIES.get(data["test_id"], "other"),
            "message": message, "file": _relative(data["filename"], root),
            "line": data.get("line_number") or 1,
            "cwe": (data.get("issue_cwe") or {}).get("id"),
        })
    errors = [f"{_relative(name, root)}: {reason}" for name, reason in bandit.skipped]
    return findings, errors


def _relative(name: str, root: Path) -> str:
    path = Path(name)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
