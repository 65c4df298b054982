"""Write a report to FILE.json, FILE.sarif or FILE.html (the suffix picks the renderer)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DetainError

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

FORMATS = (".json", ".sarif", ".html")


def check_path(path: str) -> None:
    """Fail before running anything when the report could not be written."""
    if Path(path).suffix.lower() not in FORMATS:
        raise DetainError(f"--report {path}: the name must end in .json, .sarif or .html")
    parent = Path(path).parent
    if not parent.is_dir():
        raise DetainError(f"--report {path}: directory {parent} does not exist")


def render(report: dict[str, Any], suffix: str) -> str:
    if suffix == ".sarif":
        from .sarif import to_sarif

        return json.dumps(to_sarif(report), indent=2) + "\n"
    if suffix == ".html":
        from .html import to_html

        return to_html(report)
    return json.dumps(report, indent=2, default=str) + "\n"


def write_report(report: dict[str, Any], path: str) -> None:
    check_path(path)
    text = render(report, Path(path).suffix.lower())
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DetainError(f"--report {path}: cannot write ({exc.strerror})") from None
