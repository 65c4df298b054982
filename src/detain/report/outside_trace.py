"""The outside tracer's records (host/tracer.py) as kernel/runtime events, merged with the
audit hook's.

The records are JSON lines written by the tracer process, outside the job's reach; what
they quote (paths, argv, socket addresses) is the job's and is shown only, capped, never
parsed for structure. A line that is not such a record cannot come from the tracer and is
flagged, a trace without the tracer's closing record is flagged as cut short.

Noise is left out: read-only opens of the system, the interpreter and detain's own guest
files (unless the path is a sensitive one), directory opens, bytecode caches, and failed
execs while a shell or Python searches PATH (ENOENT), and reads that failed for want of
the file (a read refused, EACCES or EPERM, is kept).

The job's own interpreter (the first process the sandbox starts) also reports through the
audit hook: a kernel event of that process which the hook also reported (same category
and path or address) is not listed twice; the hook's event keeps its file:line and gains
`detail.kernel`, the kernel's confirmation. A process started from it is linked the other
way: its exec names the hook's subprocess event (`detail.requested_at`, that event's
file:line, itself in-process evidence).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from typing import Any

from ..host.rootfs import GUEST_CHANNEL
from ..host.tracer import HEADER, INTERPRETER_START
from ..policy import SCRATCH
from .events import TEXT_CAP, WRITE_FLAGS, sensitive, with_flags
from .kernel_trace import PYTHON_NAME, Merged

O_DIRECTORY, O_CREAT = 0o200000, 0o100
QUIET_READS = ("/usr/", "/lib", "/bin/", "/sbin/", "/etc/ld.so.", "/etc/localtime",
               "/proc/self/", "/proc/thread-self/", "/dev/null", "/dev/urandom",
               "/dev/random", "/dev/zero", "/detain/", "/sys/devices/system/cpu",
               "/proc/net/dev")  # the last: the launcher's own look at its interfaces
QUIET_PARTS = ("/site-packages/", "/dist-packages/", "/__pycache__/", "/lib/python3")
# /detain/channel: the launcher opens its channel where no fd can be handed in (podman)
HOOK_ADDRESS = re.compile(r"^\('([^']*)', (\d+)[,)]")  # the hook's ('host', port, ...)
QUIET_WRITES = ("/dev/null", "/dev/tty", GUEST_CHANNEL)
ARGV_SHOWN = 32
FILE_WRITES = ("unlink", "unlinkat", "rename", "renameat", "renameat2", "chmod", "fchmodat",
               "mkdir", "mkdirat", "symlink", "symlinkat", "link", "linkat")
SOURCE = "outside trace"
SPAWNS = ("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
          "pty.spawn")


def _text(value: Any) -> str:
    """A quoted string from a record: the tracer's {"text", "truncated"} form or a string."""
    if isinstance(value, dict):
        text = value.get("text") if isinstance(value.get("text"), str) else ""
        return text[:TEXT_CAP] + "..."
    return value[:TEXT_CAP] if isinstance(value, str) else "?"


def _address(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    family = value.get("family")
    if family in ("inet", "inet6"):
        host = _text(value.get("host"))
        port = value.get("port") if isinstance(value.get("port"), int) else "?"
        return f"[{host}]:{port}" if family == "inet6" else f"{host}:{port}"
    if family == "unix":
        return ("@" if value.get("abstract") is True else "") + _text(value.get("path"))
    return f"family {family}" if isinstance(family, int) else None


def classify(record: dict[str, Any], quiet: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(category, target) of one syscall record, or None when it is noise; `quiet` are
    more dirs whose reads are (the interpreter's)."""
    syscall = record.get("syscall")
    paths = [_text(p) for p in record.get("paths", [])] if isinstance(
        record.get("paths"), list) else []
    if syscall in ("execve", "execveat"):
        if record.get("result") == "ENOENT":
            return None
        if record.get("fileless") is True:  # the tracer read the image: no file
            return "process", _text(record.get("image"))
        return "process", paths[0] if paths else "?"
    if syscall in ("open", "openat", "openat2", "creat"):
        flags = record.get("flags") if isinstance(record.get("flags"), int) else 0
        path = paths[0] if paths else "?"
        resolved = _text(record["resolved"]) if "resolved" in record else None
        if resolved and sensitive(resolved) and not sensitive(path):
            path = resolved  # spelled relative to a dir fd (`environ` in /proc/self)
        if flags & WRITE_FLAGS:
            return (None if path in QUIET_WRITES or path.endswith(".pyc")
                    or "/__pycache__/" in path else ("file-write", path))
        routine = (flags & O_DIRECTORY or record.get("result") not in ("ok", "EACCES", "EPERM")
                   or path.startswith(QUIET_READS + quiet) or any(p in path for p in QUIET_PARTS))
        if routine and not sensitive(path):
            return None
        return "file-read", path
    if syscall in ("connect", "bind", "sendto", "sendmsg"):
        where = _address(record.get("address"))
        return None if where is None else ("network", where)
    if syscall == "listen":
        return "network", "a socket"
    if syscall in FILE_WRITES:
        target = " -> ".join(paths) or "?"
        if isinstance(record.get("mode"), int):
            target += f" mode {record['mode']:o}"
        return "file-write", target
    return None


def _outcome(result: Any) -> str:
    if result == "ok":
        return "allowed"
    if result in ("EPERM", "EACCES"):
        return f"refused: {result}"
    return f"failed: {_text(result)}" if result is not None else "unfinished"


def parse(trace: str, quiet: tuple[str, ...] = (), installs: bool = False
          ) -> tuple[list[dict[str, Any]], list[str], int | None, int]:
    """Events, integrity flags, the hooked interpreter's pid and how many records were
    detain's own set-up, from the tracer's records.

    The hooked interpreter is the first process the sandbox execs (the launcher): the
    job's code only runs after it, so no job can choose which pid that is. `installs`: the
    launcher installs the policy's requirements before the job (guest/deps.py); its one
    pip process, the launcher's first child exec'ing pip, and that pip's descendants are
    detain's set-up, counted apart. Only the first such exec counts, and only when there
    are requirements: by then no code of the job has run, so it cannot pose as it."""
    lines = trace.split("\n")  # not splitlines(): only the tracer's "\n" ends a record
    if not lines or lines[0] != HEADER:
        return [], [f"{SOURCE}: not the tracer's output; no event was taken from it"], None, 0
    merged = Merged(SOURCE)
    foreign, end, first_job = 0, None, None
    setup: set[int] = set()
    pythons = _Pythons()
    setup_records, setup_open = 0, installs
    for line in lines[1:]:
        if not line:
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            foreign += 1
            continue
        if record.get("type") == "end":
            end = record
            continue
        if record.get("type") != "syscall":
            continue
        pid = record.get("pid") if isinstance(record.get("pid"), int) else None
        ppid = record.get("ppid") if isinstance(record.get("ppid"), int) else None
        execs = record.get("syscall") in ("execve", "execveat") and record.get("result") == "ok"
        if first_job is None and execs:
            first_job = pid
            pythons.hooked.add(pid)  # until it execs something else
            continue  # detain's own exec of the launcher
        if setup_open and execs and ppid == first_job and _is_setup_pip(record.get("argv")):
            setup_open = False
            setup.add(pid)
        elif ppid in setup and pid is not None:
            setup.add(pid)
        if pid in setup:
            setup_records += 1
            continue
        pythons.see(pid, record, execs)
        found = classify(record, quiet)
        if found is None:
            continue
        category, target = found
        detail: dict[str, Any] = {"pid": pid, "process": _text(record.get("exe") or "?"),
                                  "ppid": record.get("ppid") if isinstance(
                                      record.get("ppid"), int) else None}
        if isinstance(record.get("argv"), list):
            argv = [_text(a) for a in record["argv"][:ARGV_SHOWN]]
            detail["argv"] = " ".join(argv)[:TEXT_CAP]
        t = record.get("t") if isinstance(record.get("t"), (int, float)) else 0.0
        severity = "high" if category == "file-read" and sensitive(target) else None
        event = merged.add(str(record.get("syscall")), category, target,
                           _outcome(record.get("result")), float(t), detail, severity,
                           apart=pid)
        if event is not None and record.get("fileless") is True:
            _fileless(event, record)
        if event is not None and execs:
            pythons.started(pid, event)
    flags = merged.cap_flags() + pythons.mark()
    if foreign:
        flags.append(f"{SOURCE}: {foreign} line(s) are not tracer records; no event was "
                     "taken from them")
    if end is None:
        flags.append(f"{SOURCE}: the tracer's closing record is missing (it was ended or "
                     "its output cut); later syscalls may be missing")
    elif isinstance(end.get("dropped"), int) and end["dropped"] > 0:
        flags.append(_cap_flag(end))
    return merged.events(), flags, first_job, setup_records


class _Pythons:
    """Which processes were Python interpreters running without detain's audit hook.

    The hook is in the launcher (the first process) and, in `detain package`'s install
    phase, in every Python of the phase's venv that runs `site` (a .pth file starts it, and
    its first act is to open its log under CHILD_LOGS: the beacon seen here). A Python
    started with -S, another interpreter than the venv's, or one whose .pth was removed
    runs the package's code where only this trace sees it: its exec is marked `unhooked`.
    A process is a Python when it execs a program named so or, renamed, opens what every
    CPython opens as it starts (the tracer keeps those opens in reserve)."""

    def __init__(self) -> None:
        self.execs: dict[int, dict[str, Any] | None] = {}  # pid -> its latest exec's event
        self.python: set[int] = set()
        self.hooked: set[int] = set()

    def see(self, pid: int | None, record: dict[str, Any], execs: bool) -> None:
        if pid is None:
            return
        paths = [_text(p) for p in record.get("paths", [])] if isinstance(
            record.get("paths"), list) else []
        if execs:  # a new program in this process: what was known of the old one is gone
            self.execs[pid] = None
            self.hooked.discard(pid)
            self.python.discard(pid)
            if paths and PYTHON_NAME.match(paths[0].rsplit("/", 1)[-1]):
                self.python.add(pid)
        elif record.get("syscall") in ("open", "openat", "openat2") and paths:
            flags = record.get("flags") if isinstance(record.get("flags"), int) else 0
            if any(start in paths[0] for start in INTERPRETER_START):
                self.python.add(pid)
            elif flags & O_CREAT and paths[0].startswith(_beacon_dir()) \
                    and record.get("result") == "ok":
                self.hooked.add(pid)

    def started(self, pid: int | None, event: dict[str, Any]) -> None:
        if pid is not None:
            self.execs[pid] = event

    def mark(self) -> list[str]:
        """Mark each unhooked Python's exec; a flag for one whose exec is not listed."""
        lost = 0
        for pid in sorted(self.python - self.hooked):
            event = self.execs.get(pid)
            if event is None:
                lost += 1
                continue
            event["detail"]["unhooked"] = True
            event["summary"] += " — a Python without detain's audit hook"
        return [f"{SOURCE}: {lost} Python process(es) without detain's audit hook whose "
                "exec is not listed"] if lost else []


@functools.cache
def _beacon_dir() -> str:
    from ..guest.package_phase import CHILD_LOG_DIR  # only runs that create files load it

    return f"{SCRATCH}/{CHILD_LOG_DIR}/"


def _cap_flag(end: dict[str, Any]) -> str:
    """What the tracer's cap left out; execs, connections and sensitive opens have a
    reserve, so saying how many of those were lost tells whether a late one is missing."""
    cap = end.get("cap") if isinstance(end.get("cap"), int) else end.get("records")
    vital = end.get("dropped_vital") if isinstance(end.get("dropped_vital"), int) else 0
    reserve = end.get("reserve") if isinstance(end.get("reserve"), int) else 0
    kept = (f"; none of them an exec, a connection or a sensitive open (each has {reserve} "
            "records reserved)" if not vital else
            f", {vital} of them execs, connections or sensitive opens past their reserve")
    size = f" ({end['byte_cap'] >> 20} MiB)" if isinstance(end.get("byte_cap"), int) else ""
    return (f"{SOURCE}: {end['dropped']} record(s) past the tracer's cap of {cap}{size} were "
            f"counted, not written{kept}")


def _fileless(event: dict[str, Any], record: dict[str, Any]) -> None:
    """An exec of no file (a memfd, a file deleted first): named as such, high severity,
    with what named it (a descriptor: `execveat(fd, "")`, /proc/self/fd/N)."""
    detail = event["detail"]
    detail["fileless"] = True
    paths = record.get("paths") if isinstance(record.get("paths"), list) else []
    detail["path"] = _text(paths[0]) if paths else None
    if isinstance(record.get("dirfd"), (int, str)):
        detail["dirfd"] = record["dirfd"]
    event["severity"] = "high"
    event["summary"] = f"fileless exec {detail['target'][:200]} ({detail['outcome']})"


def _is_setup_pip(argv: Any) -> bool:
    """guest/deps.py's command: `PYTHON -I WHEEL/pip install --isolated --no-index …`."""
    return isinstance(argv, list) and len(argv) > 5 and argv[1:2] == ["-I"] \
        and str(argv[2]).endswith("/pip") and argv[3:5] == ["install", "--isolated"]


def _hook_key(event: dict[str, Any]) -> tuple[str, str] | None:
    detail = event.get("detail", {})
    if event["category"] in ("file-read", "file-write"):
        path = detail.get("path")
        return (event["category"], str(path)) if path else None
    if event["category"] == "network":
        host, port = detail.get("host"), detail.get("port")
        if host in (None, "") and event["event"] in ("socket.connect", "socket.sendto"):
            found = HOOK_ADDRESS.match(str(detail.get("address") or ""))
            host, port = found.groups() if found else (None, None)
        return ("network", _endpoint(str(host), port)) if host not in (None, "") else None
    return None


def _endpoint(host: str, port: Any) -> str:
    """host:port as the trace writes it ([v6]:port, the address in full), so that the
    hook's ('::1', 80) and the kernel's [0:0:0:0:0:0:0:1]:80 are one endpoint."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    if address.version == 4:
        return f"{address}:{port}"
    return f"[{':'.join(f'{int(g, 16):x}' for g in address.exploded.split(':'))}]:{port}"


def merge(behaviour: dict[str, Any], trace: str, quiet: tuple[str, ...] = (),
          installs: bool = False) -> int:
    """Add the trace's events to a Result's behaviour, each observation counted once;
    `quiet`: the interpreter's dirs, whose reads are its own loading; `installs`: see
    parse. Returns how many records were detain's own set-up, left out."""
    kernel, flags, hooked, setup = parse(trace, quiet, installs)
    events = behaviour.setdefault("events", [])
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    spawns = _Spawns([e for e in events if e["event"] in SPAWNS])
    for event in events:
        key = _hook_key(event)
        if key is not None and (key not in by_key or event["event"] in ("socket.connect",
                                                                        "socket.sendto")):
            by_key[key] = event  # the connect itself answers the kernel's, not the lookup
    for event in kernel:
        detail = event["detail"]
        twin = by_key.get((event["category"], detail["target"])) if (
            hooked is not None and detail["pid"] == hooked) else None
        if twin is not None:
            twin["detail"]["kernel"] = (f"{detail['syscall']} ({detail['outcome']}), "
                                        f"pid {detail['pid']}")
            continue
        if event["category"] == "process" and hooked is not None and detail["ppid"] == hooked:
            spawns.link(event)
        events.append(event)
    if flags:
        behaviour["integrity"] = with_flags(behaviour.get("integrity", {"flags": []}), flags)
    return setup


class _Spawns:
    """The hook's spawn events, matched to the kernel's execs of the hooked interpreter's
    children in order: each exec (in the order they happened) takes the next spawn, from
    where the last match left off, that runs the same program, so each spawn answers at
    most one exec and a later spawn of the same program is never answered by an earlier
    line. Only a child's first exec is matched (its later ones are its own doing)."""

    def __init__(self, spawns: list[dict[str, Any]]) -> None:
        self.spawns = [s for s in spawns if s.get("file")]
        self.next = 0
        self.seen: set[Any] = set()

    def link(self, event: dict[str, Any]) -> None:
        detail = event["detail"]
        if detail["pid"] in self.seen:
            return
        self.seen.add(detail["pid"])
        names = {str(detail["target"]).rsplit("/", 1)[-1],
                 str(detail.get("argv", "")).split(" ", 1)[0].rsplit("/", 1)[-1]}
        for index in range(self.next, len(self.spawns)):
            spawn = self.spawns[index]
            program = _program(spawn)
            if program is None or program in names:
                detail["requested_at"] = f"{spawn['file']}:{spawn.get('line')}"
                self.next = index + 1
                return


def _program(spawn: dict[str, Any]) -> str | None:
    """The program a hook spawn event runs (its executable's name; a shell for
    os.system), or None when the event does not say."""
    if spawn["event"] == "os.system":
        return "sh"
    executable = spawn["detail"].get("executable")
    return executable.rsplit("/", 1)[-1] if isinstance(executable, str) and executable \
        else None
