"""A capped excerpt of a job's stdout or stderr for the report: the first and last lines.

The whole streams stay in the Result (`--json`); a report only needs enough to see what
the job said (its first lines, and the traceback at the end). Lines and their number are
capped so a job that prints megabytes, or one 16 MiB line, cannot swell the report. The
text is decoded as the Result decodes it (UTF-8, other bytes as backslash escapes) and is
still the job's: renderers sanitise it (safe_text.visible) and escape it for their format.
"""

from __future__ import annotations

from typing import Any

HEAD_LINES = 20
TAIL_LINES = 20
LINE_CAP = 300  # characters kept of one line


def _line(raw: bytes) -> str:
    text = raw[:LINE_CAP * 4].decode("utf-8", "backslashreplace")
    return text if len(text) <= LINE_CAP and len(raw) <= LINE_CAP * 4 \
        else text[:LINE_CAP] + "…"


def excerpt(data: bytes, truncated: bool = False) -> dict[str, Any]:
    """`head` and `tail` lines of `data` with the count of lines omitted between them;
    `tail` is empty when every line fits in `head` and `tail` together."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    if len(parts) <= HEAD_LINES + TAIL_LINES:
        head, tail = parts, []
    else:
        head, tail = parts[:HEAD_LINES], parts[-TAIL_LINES:]
    return {"bytes": len(data), "truncated": truncated, "head": [_line(p) for p in head],
            "tail": [_line(p) for p in tail], "omitted_lines": len(parts) - len(head) - len(tail)}
