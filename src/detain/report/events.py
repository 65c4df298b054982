"""Turn the channel's records into behaviour events, checking what the sandbox claims.

Every record after the launcher's `audit` record was written by a process the job shares,
so nothing here is trusted: fields are type-checked and capped, and the sequence is
verified. The launcher numbers its records 1, 2, 3 ... and ends with a `done` summary, so
a job that writes into the channel shows up as a duplicate or out-of-order number, a
record after `done`, or a `done` whose count disagrees. A job that reads the counter
and forges the *next* number undetectably is possible in principle (it shares the
memory); the real record then collides with it and both are flagged. This is evidence,
not proof: the provenance of every such event is `in-process`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..host.supervise import CHANNEL_CAP

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

IN_PROCESS = "in-process"
KERNEL = "kernel/runtime"
MAX_EVENTS = 5000
MAX_FLAGS = 20  # integrity flags listed; past that they are counted (a job can make millions)
TEXT_CAP = 500
STREAM_CAP = 200  # a forked process's label: seqs joined by '/'
MAX_STREAMS = 1000  # processes whose numbering is followed (each costs host memory)
PRE_JOB = ("ready", "hello", "audit", "deps")

KNOWN_EVENTS = {
    "open", "os.remove", "os.unlink", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
    "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
    "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move",
    "shutil.make_archive", "shutil.unpack_archive", "socket.connect", "socket.bind",
    "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyname_ex", "socket.gethostbyaddr", "urllib.Request",
    "http.client.connect", "ftplib.connect", "smtplib.connect", "telnetlib.Telnet.open",
    "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
    "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "os.startfile", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata", "ctypes.string_at",
    "pickle.find_class", "marshal.loads", "marshal.load", "compile", "exec", "import",
    "sys.addaudithook", "os.environ.get", "os.environ.iter", "code.forged",
    "gc.get_referents", "gc.get_referrers", "gc.get_objects", "cpython.PyInterpreterState_New",
}
VIA_CAP = 8
SENSITIVE = ("/.ssh/", "/.ssh", ".aws/credentials", "/.netrc", "/etc/shadow", "/.gnupg",
             ".docker/config.json", ".kube/config", ".git-credentials", ".pypirc", "id_rsa",
             "id_ed25519", "/proc/self/environ")
# A process's environment however the path to it is spelled (/proc/2/task/2/environ)
PROC_ENVIRON = re.compile(r"^/proc/[^/]+(/task/[^/]+)?/environ$")


def sensitive(path: str) -> bool:
    """Whether reading `path` is reading credentials (SENSITIVE, any process's environ)."""
    return any(s in path for s in SENSITIVE) or bool(PROC_ENVIRON.match(path))


WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND
SEVERITY = {"network": "high", "process": "high", "native": "high", "hook": "high",
            "code": "medium", "deserialize": "medium", "file-write": "medium",
            "file-read": "low", "import": "info", "runtime": "high", "env": "high", "fd": "info"}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= TEXT_CAP else text[:TEXT_CAP] + "..."


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        return {}
    detail: dict[str, Any] = {}
    for key, value in list(args.items())[:8]:
        if isinstance(value, bool) or value is None or _int(value) is not None:
            detail[_text(key) or ""] = value
        else:
            detail[_text(key) or ""] = _text(value)
    return detail


def category_of(event: str, raw: str, detail: dict[str, Any]) -> str:
    """The guest's coarse category, refined: an `open` is a read or a write of a path, or
    of no path at all: `open(5)` / `os.fdopen(5)` (subprocess does it for every pipe it
    makes) wraps a descriptor the job already holds, so it is `fd`, never a file read."""
    if raw == "file":
        if event != "open":
            return "file-write"
        if _int(detail.get("path")) is not None:
            return "fd"
        mode, flags = detail.get("mode") or "", detail.get("flags")
        wants_write = any(c in str(mode) for c in "wax+") or (
            isinstance(flags, int) and flags & WRITE_FLAGS)
        return "file-write" if wants_write else "file-read"
    return raw if raw in SEVERITY else "other"


def summary_of(event: str, detail: dict[str, Any]) -> str:
    """One short line a person reads: what was touched, not how the hook saw it."""
    if event == "open" and _int(detail.get("path")) is not None:
        return f"fd {detail['path']} (an open descriptor such as a pipe, not a path)"
    for key in ("path", "address", "url", "command", "executable", "library", "module",
                "host", "global", "code", "source", "filename", "name"):
        value = detail.get(key)
        if value not in (None, ""):
            if key == "host" and detail.get("port") not in (None, "None"):
                return f"{event} {value}:{detail['port']}"
            return f"{event} {value}"
    return event


# Network syscalls that are plumbing, not evidence of egress:
#  * a bind to port 0 of any address: an ephemeral port, no listener (a listen() is its own
#    event) and nothing sent; libraries do it to probe a capability at import (urllib3
#    binds ::1 to learn whether IPv6 works);
#  * glibc's resolver asking the kernel for the host's addresses (a netlink socket, family
#    16, for AI_ADDRCONFIG) and trying nscd's socket: every name lookup does both. The
#    lookup itself is reported (the DNS query, the connection that follows).
# Matches the hook's repr of an address tuple and the outside/gVisor trace's targets.
EPHEMERAL_BIND = re.compile(r"^\('[0-9a-fA-F:.%\w]*', 0[,)]|^(\[[0-9a-fA-F:.%\w]*\]|[0-9.]+):0$")
RESOLVER_PLUMBING = ("family 16", "/var/run/nscd/socket", "/run/nscd/socket")


def network_severity(event: str, target: str) -> str | None:
    """"low" for the network plumbing above, None for any other event."""
    if event in ("socket.bind", "bind") and EPHEMERAL_BIND.search(target):
        return "low"
    if event in ("bind", "sendto", "connect") and target in RESOLVER_PLUMBING:
        return "low"
    return None


def severity_of(category: str, detail: dict[str, Any], event: str = "") -> str:
    if category == "network" and network_severity(event, str(detail.get("address", ""))):
        return "low"
    if category == "file-read" and sensitive(str(detail.get("path", ""))):
        return "high"
    if category == "env" and "name" not in detail:  # the whole environment walked
        return "medium"
    if event == "code.forged":  # code made under a stdlib or dependency file's name
        return "high"
    return SEVERITY.get(category, "low")


class Flags:
    """Integrity flags: the first MAX_FLAGS listed, every one counted. Each record a job
    forges can raise one, so the list, the report and the host's memory stay bounded
    whatever it writes."""

    def __init__(self) -> None:
        self.verdicts: list[str] = []  # the few about the channel as a whole: always listed
        self.listed: list[str] = []
        self.total = 0

    def append(self, flag: str) -> None:
        self.total += 1
        if len(self.listed) < MAX_FLAGS:
            self.listed.append(flag)

    def verdict(self, flag: str) -> None:
        self.total += 1
        self.verdicts.append(flag)

    def __iadd__(self, flags: Iterable[str]) -> Flags:
        for flag in flags:
            self.append(flag)
        return self

    def __bool__(self) -> bool:
        return self.total > 0

    def as_list(self) -> list[str]:
        more = self.total - len(self.verdicts) - len(self.listed)
        tail = [f"{more} more flag(s) like these: counted, not listed"] if more else []
        return self.verdicts + self.listed + tail


def collect(records: list[dict], channel_bytes: int = 0) -> dict[str, Any]:
    """Behaviour events and an integrity verdict from a run's channel records."""
    audit = next((r for r in records if r.get("type") == "audit"), None)
    if audit is None:
        return {"audit": False, "events": [], "integrity": {
            "flags": ["no audit hook record: the launcher did not reach the job"],
            "flags_total": 1, "complete": False}}
    job_root = _text(audit.get("job_root")) or ""
    events: list[dict[str, Any]] = []
    flags = Flags()
    streams: dict[str | None, _Stream] = {None: _Stream()}
    host_dropped = 0
    after_audit = False
    for record in records:
        kind = record.get("type")
        if record is audit:
            after_audit = True
            continue
        if not after_audit or kind == "exit":
            continue
        if kind in PRE_JOB:
            flags.append(f"a second {_text(kind)!r} record after the job started (forged)")
            continue
        seq, label = _int(record.get("seq")), record.get("stream")
        if kind not in ("event", "done", "fork") or seq is None or not (
                label is None or (isinstance(label, str) and len(label) <= STREAM_CAP)):
            flags.append(f"malformed record of type {_text(kind)!r} (forged or corrupted)")
            continue
        suspect = []
        if label not in streams:
            if len(streams) >= MAX_STREAMS:
                flags.append(f"a record of forked process {_text(label)} past the cap of "
                             f"{MAX_STREAMS} processes: not read")
                continue
            suspect.append(f"forked process {label} was announced by no fork")
            streams[label] = _Stream()
        stream = streams[label]
        stream.check(seq, suspect)
        if kind == "fork":
            if suspect:
                flags.append(f"fork record {_where(label, seq)}: {'; '.join(suspect)}")
            elif len(streams) < MAX_STREAMS:  # past it, the child's records say so
                streams.setdefault(f"{label}/{seq}" if label else str(seq), _Stream())
            continue
        if kind == "done":
            if stream.done is None:
                stream.done = record
            else:
                flags.append("more than one final summary (forged)")
            continue
        if len(events) >= MAX_EVENTS:
            host_dropped += 1
            continue
        event = _event(record, job_root, suspect)
        stream.by_seq.setdefault(seq, []).append(event)
        stream.events.append(event)
        events.append(event)
    for label, stream in streams.items():
        flags += [f"event {_where(label, e['seq'])} ({e['event']}): {e['suspect']}"
                  for e in stream.events if e.get("suspect")]
    integrity = _integrity(streams, flags, host_dropped, channel_bytes)
    done = streams[None].done
    if done is not None:
        _attach_module_paths(events, done.get("modules"))
    return {"audit": True, "job_root": job_root, "events": events, "integrity": integrity}


class _Stream:
    """One process's numbered records: the launcher's (label None), or a process forked
    from it, which numbers its own from 1 under the label its parent announced with a
    `fork` record (the seq of that record, after the parent's own label). An honest fork
    so reuses no number, while a record replayed or forged into any stream still does."""

    def __init__(self) -> None:
        self.expected = 1
        self.done: dict | None = None
        self.by_seq: dict[int, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []

    def check(self, seq: int, suspect: list[str]) -> None:
        """Note in `suspect` what is wrong with `seq` arriving next in this stream."""
        if self.done is not None:
            suspect.append("after the launcher's final summary")
        if seq in self.by_seq:
            suspect.append(f"sequence number {seq} used twice")
            for other in self.by_seq[seq]:
                other["suspect"] = other.get("suspect") or f"sequence number {seq} used twice"
        elif seq != self.expected and self.done is None:
            suspect.append(f"sequence number {seq} where {self.expected} was due")
        if self.done is None and seq == self.expected:
            self.expected += 1
        self.by_seq.setdefault(seq, [])


def _where(label: str | None, seq: Any) -> str:
    return f"{seq}" if label is None else f"{seq} of forked process {_text(label)}"


def _event(record: dict, job_root: str, suspect: list[str]) -> dict[str, Any]:
    name = _text(record.get("event")) or "?"
    if name not in KNOWN_EVENTS:
        suspect.append("not an event the launcher reports")
    detail = _detail(record.get("args"))
    category = category_of(name, str(record.get("category")), detail)
    file = _text(record.get("file"))
    if file and job_root and file.startswith(job_root.rstrip("/") + "/"):
        file = file[len(job_root.rstrip("/")) + 1:]
    t_us = _int(record.get("t_us"))
    return {"seq": record.get("seq"), "t": round(t_us / 1e6, 6) if t_us is not None else None,
            "event": name, "category": category, "severity": severity_of(category, detail, name),
            "file": file, "line": _int(record.get("line")), "detail": detail,
            "summary": summary_of(name, detail), "provenance": IN_PROCESS,
            "suspect": "; ".join(suspect) or None, **_origin(record)}


def _origin(record: dict) -> dict[str, Any]:
    """`via`: the exec'd pseudo-frames between the code and `file:line`; `pid`: the child
    process (pip's build) whose hook saw it, when it was not the launcher's own; `through`:
    the dependency the code called that did it (urllib3, the build backend)."""
    origin: dict[str, Any] = {}
    via = record.get("via")
    if isinstance(via, list):
        origin["via"] = [_text(v) for v in via[:VIA_CAP]]
    if _int(record.get("pid")) is not None:
        origin["pid"] = record["pid"]
    if record.get("through") is not None:
        origin["through"] = _text(record["through"])
    return origin


def _integrity(streams: dict[str | None, _Stream], flags: Flags, host_dropped: int,
               channel_bytes: int) -> dict[str, Any]:
    """The channel's verdict. Complete only when nothing was lost: no flag, and nothing the
    hook or the host counted instead of sending (the hook's budgets, the host's caps)."""
    dropped: dict[str, int] = {}
    observed = sent = None
    for label, stream in streams.items():
        done = stream.done
        if done is None:
            if label is None:
                flags.verdict("no final summary from the launcher: the job ended the "
                              "interpreter abruptly (os._exit, a signal, a limit), closed the "
                              "channel, or it overflowed; events after that point are unknown")
            continue  # a forked child usually leaves through os._exit: no summary is due
        raw = done.get("dropped") if isinstance(done.get("dropped"), dict) else {}
        prefix = "" if label is None else f"forked process {_text(label)}: "
        for key, value in list(raw.items())[:100]:
            if _int(value) is not None and value >= 0:
                dropped[prefix + (_text(key) or "?")] = value
        said = _int(done.get("sent"))
        if label is None:
            observed, sent = _int(done.get("observed")), said
        honest = len([e for e in stream.events if not e.get("suspect")])
        if said is not None and said != honest:  # a fork's is capped: a job makes many
            add = flags.verdict if label is None else flags.append
            who = "the launcher" if label is None else f"forked process {_text(label)}"
            add(f"{who} says it sent {said} events; {honest} arrived in sequence")
    if host_dropped:
        dropped["<host cap>"] = host_dropped
    if channel_bytes > CHANNEL_CAP:
        flags.verdict(f"the channel carried {channel_bytes} bytes, over detain's cap of "
                     f"{CHANNEL_CAP}: everything past the cap was counted, not read")
    complete = streams[None].done is not None and not flags and not any(dropped.values())
    return {"observed": observed, "sent": sent,
            "received": sum(len(s.events) for s in streams.values()), "dropped": dropped,
            "dropped_total": sum(dropped.values()), "channel_bytes": channel_bytes,
            "complete": complete, "flags": flags.as_list(), "flags_total": flags.total}


def with_flags(integrity: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    """`integrity` with more flags (another observer's: a kernel trace, the outside
    tracer); any flag is a loss of observation, so the run is no longer `complete`."""
    if not flags:
        return integrity
    total = integrity.get("flags_total", len(integrity.get("flags", []))) + len(flags)
    return {**integrity, "flags": [*integrity.get("flags", []), *flags],
            "flags_total": total, "complete": False}


def _attach_module_paths(events: list[dict], modules: Any) -> None:
    """Imports name a module; where it was loaded from arrives with the final summary."""
    if not isinstance(modules, dict):
        return
    for event in events:
        if event["event"] == "import":
            path = modules.get(event["detail"].get("module"))
            if isinstance(path, str):
                event["detail"]["path"] = _text(path)
