"""gVisor's strace (Result.trace) as kernel/runtime events: what the sandbox kernel saw.

These lines come from runsc's sentry, outside the job's reach, so unlike the audit hook's
events they cannot be forged by the job. Only syscall *exits* are read (they carry the
outcome: a refused connect shows its errno), for the syscalls that matter to a report;
repeats of the same call are merged with a count, and the total is capped.
"""

from __future__ import annotations

import re
from typing import Any

from .events import KERNEL, SEVERITY

MAX_EVENTS = 2000
LINE = re.compile(r"^\w(\d\d\d\d) (\d\d):(\d\d):(\d\d\.\d+)\s+\d+ strace\.go:\d+\] "
                  r"\[\s*(\d+):\s*\d+\] (\S+) X (\w+)\((.*)\) = (.*)$")
WRITE_OPEN = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
ADDRESS = re.compile(r"Addr: ([^,}]+), Port: (\d+)")
ERRNO = re.compile(r"errno=\d+ \(([^)]*)\)")
CATEGORY = {"connect": "network", "bind": "network", "sendto": "network",
            "execve": "process", "execveat": "process", "unlinkat": "file-write",
            "renameat": "file-write", "renameat2": "file-write", "mkdirat": "file-write",
            "openat": "file-write"}


def _what(syscall: str, args: str) -> str | None:
    if syscall == "openat":
        if not WRITE_OPEN.search(args):
            return None
        parts = args.split(", ")
        return parts[1].split(" ", 1)[-1] if len(parts) > 1 else args[:200]
    if syscall in ("connect", "bind", "sendto"):
        match = ADDRESS.search(args)
        return f"{match.group(1)}:{match.group(2)}" if match else None
    if syscall.startswith("execve"):
        return args.split(", ")[0].split(" ", 1)[-1]
    return args.split(", ")[1].split(" ", 1)[-1] if ", " in args else args[:200]


def trace_events(trace: str | None) -> list[dict[str, Any]]:
    """Events from raw strace text (already size-capped by the backend)."""
    if not trace:
        return []
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    start = None
    for line in trace.splitlines():
        match = LINE.match(line)
        if match is None or match.group(7) not in CATEGORY:
            continue
        syscall, args, result = match.group(7), match.group(8), match.group(9)
        what = _what(syscall, args)
        if what is None or what.startswith("/detain/"):
            continue  # detain's own files (the launcher opening its channel)
        seconds = int(match.group(2)) * 3600 + int(match.group(3)) * 60 + float(match.group(4))
        start = seconds if start is None else start
        failed = ERRNO.search(result)
        outcome = f"refused: {failed.group(1)}" if failed else "allowed"
        key = (syscall, what[:300], outcome)
        if key in merged:
            merged[key]["detail"]["count"] += 1
            continue
        if len(merged) >= MAX_EVENTS:
            break
        category = CATEGORY[syscall]
        merged[key] = {
            "seq": None, "t": round(max(0.0, seconds - start), 6), "event": f"kernel.{syscall}",
            "category": category, "severity": SEVERITY[category], "file": None, "line": None,
            "detail": {"syscall": syscall, "target": what[:300], "outcome": outcome,
                       "pid": int(match.group(5)), "count": 1},
            "summary": f"{syscall} {what[:200]} ({outcome})", "provenance": KERNEL,
            "suspect": None}
    return list(merged.values())
