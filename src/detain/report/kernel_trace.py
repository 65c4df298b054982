"""gVisor's strace (Result.trace) as kernel/runtime events: what the sandbox kernel saw.

The records come from runsc's sentry, outside the job's reach, but they quote the job:
runsc prints a path argument unquoted and a task's name (which the job sets with
`prctl(PR_SET_NAME)`, up to 15 bytes) before the syscall. So the record boundary and the
syscall's name are proven, not guessed:

  * runsc writes its debug log as JSON (`--debug-log-format=json`, set by the gvisor
    backend): one object per line, every byte of the message escaped inside it by Go's
    encoder. A path holding a newline stays inside its own record; a line that is not such
    an object (runsc writes none) yields no event and flags the trace as tampered.
  * In the message `[pid: tid] NAME E|X syscall(args)`, the job's name could itself hold
    ` X connect(`: a record in which more than one ` E|X name(` starts where a task name
    can still be is ambiguous, yields no event, and is flagged.
  * Arguments are read from the right, where runsc's own fields are (open flags, the
    sockaddr it formats, the result after the last `) = `), so a path holding
    `O_WRONLY` or `Addr: 6.6.6.6, Port: 4444` cannot make up a write or a connection.

Only syscall *exits* are read (they carry the outcome: a refused connect shows its errno),
for the syscalls that matter to a report. Repeats of the same call are merged with a
count; distinct events are capped per category, so a flood of throw-away file creations
cannot push a later connect out. Every cap reached, and the backend's byte cap on the raw
trace, is flagged in the report's integrity section.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import KERNEL, SEVERITY, network_severity
from .verdict import is_build_tool, telling

MAX_PER_CATEGORY = 2000  # listed; a credential or persistence path is listed past it too
TARGET_CAP = 300
PYTHON_NAME = re.compile(r"^python[0-9.]*$")
NAME_MAX = 15  # a task name's bytes (TASK_COMM_LEN - 1), in Linux and in gVisor
TRUNCATED = "[detain: trace truncated after "
RECORD = re.compile(r"\[\s*(\d+):\s*\d+\] ")
MARKER = re.compile(r" ([EX]) (\w+)\(")
RESULT = re.compile(r"-?\d+ \(0x[0-9a-f]+\)(?: errno=\d+ \(([^()]*)\))? \([^()]*\)")
ADDRESS = re.compile(r"\{Family: AF_INET6?, Addr: ([0-9A-Za-z.:%]+), Port: (\d+)\}, "
                     r"0x[0-9a-f]+$")
POINTER = re.compile(r"^0x[0-9a-f]+ ")
OWN_FILE = re.compile(r"AT_FDCWD [^,]*, 0x[0-9a-f]+ /detain/\S*")  # the launcher's channel
WRITE_OPEN = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
CATEGORY = {"connect": "network", "bind": "network", "sendto": "network",
            "execve": "process", "execveat": "process",
            **dict.fromkeys(("open", "openat", "creat", "mkdir", "mkdirat", "unlink",
                             "unlinkat", "rmdir", "rename", "renameat", "renameat2"),
                            "file-write")}
# runsc's own trailing fields after the path, per syscall (flags, mode), and whether a
# directory fd comes first.
PATH_LAYOUT = {"open": (2, False), "openat": (2, True), "creat": (1, False),
               "mkdir": (1, False), "mkdirat": (1, True), "unlink": (0, False),
               "unlinkat": (1, True), "rmdir": (0, False)}


@dataclass
class KernelTrace:
    """The events a trace proves, and what the integrity section must say about it."""

    events: list[dict[str, Any]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def read_trace(directory: Path, cap: int) -> str:
    """The strace records of runsc's JSON debug logs in `directory`, as raw lines, capped at
    `cap` bytes (a line saying so ends a cut trace). Lines that are not JSON are kept, so
    that the parser flags them."""
    lines: list[str] = []
    size = 0
    for path in sorted(directory.iterdir()):
        with open(path, "rb") as handle:
            for raw in handle:
                line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
                record = _record(line)
                if record is not None and not RECORD.match(record[0]):
                    continue  # runsc's other log messages
                size += len(line) + 1
                if size > cap:
                    lines.append(f"{TRUNCATED}{cap} bytes]")
                    return "\n".join(lines) + "\n"
                lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def _record(line: str) -> tuple[str, str] | None:
    """(message, time) of one runsc JSON log line, or None when it is not one."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("msg"), str):
        return None
    when = data.get("time")
    return data["msg"], when if isinstance(when, str) else ""


def _path(head: str, dirfd: bool) -> str:
    """The path argument from `[DIRFD, ]0xADDR PATH` (the dirfd's own path may quote the
    job too: this is for showing, never for deciding what happened)."""
    if dirfd:
        head = head.split(", ", 1)[-1]
    return POINTER.sub("", head, count=1)


def _target(syscall: str, args: str) -> str | None:
    """What a syscall acted on, read from runsc's fields; None when it is not notable."""
    if syscall in ("connect", "bind", "sendto"):
        match = ADDRESS.search(args)
        return f"{match.group(1)}:{match.group(2)}" if match else None
    if syscall in ("execve", "execveat"):
        head = args.split(", ", 1)[-1] if syscall == "execveat" else args
        return POINTER.sub("", head.split(", 0x", 1)[0], count=1)
    if syscall in PATH_LAYOUT:
        trailing, dirfd = PATH_LAYOUT[syscall]
        parts = args.rsplit(", ", trailing) if trailing else [args]
        if len(parts) != trailing + 1:
            return None
        if syscall in ("open", "openat") and not WRITE_OPEN.search(parts[1]):
            return None
        if syscall == "openat" and OWN_FILE.fullmatch(parts[0]):
            return None
        return _path(parts[0], dirfd)
    return re.sub(r"0x[0-9a-f]+ ", "", args)  # renames: both paths, as runsc shows them


def _seconds(when: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(when).timestamp()
    except ValueError:
        return None


class Merged:
    """Kernel events merged by (syscall, target, outcome[, apart]) with a count, capped per
    category, so a flood of throw-away files cannot push a later connect out; telling paths
    and programs that are not build tools are listed past the cap (a flood of execs must
    not hide the one that counts). Shared by
    every kernel-side trace (gVisor's here, the outside tracer's in outside_trace.py)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.merged: dict[tuple[str, str, str, Any], dict[str, Any]] = {}
        self.per_category: dict[str, int] = {}
        self.over_cap: dict[str, int] = {}

    def add(self, syscall: str, category: str, target: str, outcome: str, t: float,
            detail: dict[str, Any], severity: str | None = None,
            apart: Any = None) -> dict[str, Any] | None:
        """The event for this syscall (counted into an earlier same one, unless `apart`
        differs), or None past the category's cap."""
        key = (syscall, target[:TARGET_CAP], outcome, apart)
        if key in self.merged:
            self.merged[key]["detail"]["count"] += 1
            return self.merged[key]
        if self.per_category.get(category, 0) >= MAX_PER_CATEGORY and not (
                category in ("file-read", "file-write") and telling(target)) and not (
                category == "process" and not is_build_tool(target)):
            self.over_cap[category] = self.over_cap.get(category, 0) + 1
            return None
        self.per_category[category] = self.per_category.get(category, 0) + 1
        event = self.merged[key] = {
            "seq": None, "t": round(t, 6), "event": f"kernel.{syscall}",
            "category": category, "file": None,
            "severity": severity or network_severity(syscall, target) or SEVERITY[category],
            "line": None, "detail": {"syscall": syscall, "target": target[:TARGET_CAP],
                                     "outcome": outcome, **detail, "count": 1},
            "summary": f"{syscall} {target[:200]} ({outcome})", "provenance": KERNEL,
            "suspect": None}
        return event

    def events(self) -> list[dict[str, Any]]:
        return list(self.merged.values())

    def cap_flags(self) -> list[str]:
        return [f"{self.source}: {dropped} more distinct {category} event(s) past the cap "
                f"of {MAX_PER_CATEGORY} are not listed"
                for category, dropped in sorted(self.over_cap.items())]


class _Parser:
    def __init__(self) -> None:
        self.merged = Merged("kernel trace")
        self.foreign = self.ambiguous = 0
        self.truncated: str | None = None
        self.start: float | None = None

    def line(self, line: str) -> None:
        if not line:
            return
        if line.startswith(TRUNCATED):
            self.truncated = line
            return
        record = _record(line)
        if record is None or not RECORD.match(record[0]):
            self.foreign += 1
            return
        message, when = record
        name_at = RECORD.match(message).end()
        markers = []
        for marker in MARKER.finditer(message, name_at):
            if marker.start() - name_at > NAME_MAX:
                break
            markers.append(marker)
        if len(markers) != 1:
            self.ambiguous += 1
            return
        kind, syscall = markers[0].group(1), markers[0].group(2)
        if kind == "X" and syscall in CATEGORY:
            self.exit(syscall, message[markers[0].end():], when,
                      int(RECORD.match(message).group(1)))

    def exit(self, syscall: str, rest: str, when: str, pid: int) -> None:
        args, sep, result = rest.rpartition(") = ")
        outcome = RESULT.fullmatch(result) if sep else None
        if outcome is None:
            self.ambiguous += 1
            return
        what = _target(syscall, args)
        if what is None:
            return
        seconds = _seconds(when)
        if seconds is not None and self.start is None:
            self.start = seconds
        said = f"refused: {outcome.group(1)}" if outcome.group(1) is not None else "allowed"
        t = 0.0 if seconds is None or self.start is None else max(0.0, seconds - self.start)
        python = CATEGORY[syscall] == "process" and said == "allowed" and bool(
            PYTHON_NAME.match(what.rsplit("/", 1)[-1]))
        event = self.merged.add(syscall, CATEGORY[syscall], what, said, t, {"pid": pid},
                                apart=pid if python else None)
        if python and event is not None and not event["detail"].get("unhooked"):
            # the launcher (pid 1) is the one Python here with detain's audit hook, and
            # only until it execs: gVisor's sandboxes give no other process the hook
            event["detail"]["unhooked"] = True
            event["summary"] += " — a Python without detain's audit hook"

    def flags(self) -> list[str]:
        flags = []
        if self.foreign:
            flags.append(f"kernel trace: {self.foreign} line(s) are not runsc records "
                         "(tampered with or cut off); no event was taken from them")
        if self.ambiguous:
            flags.append(f"kernel trace: {self.ambiguous} record(s) could not be read as one "
                         "syscall (a task name or argument shaped like a record); no event "
                         "was taken from them")
        flags += self.merged.cap_flags()
        if self.truncated:
            flags.append(f"kernel trace: {self.truncated.strip('[]').removeprefix('detain: ')}"
                         " (the output limit); later syscalls are missing")
        return flags


def parse_trace(trace: str | None) -> KernelTrace:
    """Events and integrity flags from the raw trace (`read_trace`'s lines)."""
    if not trace:
        return KernelTrace()
    parser = _Parser()
    for line in trace.split("\n"):  # not splitlines(): U+0085 and U+2028 are not boundaries
        parser.line(line)
    return KernelTrace(parser.merged.events(), parser.flags())
