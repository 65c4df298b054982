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

from collections.abc import Iterable
from typing import Any

from ..host.supervise import CHANNEL_CAP

IN_PROCESS = "in-process"
KERNEL = "kernel/runtime"
MAX_EVENTS = 5000
MAX_FLAGS = 20  # integrity flags listed; past that they are counted (a job can make millions)
TEXT_CAP = 500
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
    "sys.addaudithook", "os.environ.get", "os.environ.iter",
}
VIA_CAP = 8
SENSITIVE = ("/.ssh/", "/.ssh", ".aws/credentials", "/.netrc", "/etc/shadow", "/.gnupg",
             ".docker/config.json", ".kube/config", ".git-credentials", ".pypirc", "id_rsa",
             "id_ed25519", "/proc/self/environ")
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
                "host", "global", "code", "source", "name"):
        value = detail.get(key)
        if value not in (None, ""):
            if key == "host" and detail.get("port") not in (None, "None"):
                return f"{event} {value}:{detail['port']}"
            return f"{event} {value}"
    return event


def severity_of(category: str, detail: dict[str, Any]) -> str:
    if category == "file-read" and any(s in str(detail.get("path", "")) for s in SENSITIVE):
        return "high"
    if category == "env" and "name" not in detail:  # the whole environment walked
        return "medium"
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
            "flags_total": 1}}
    job_root = _text(audit.get("job_root")) or ""
    events: list[dict[str, Any]] = []
    flags = Flags()
    by_seq: dict[int, list[dict[str, Any]]] = {}
    expected, done, host_dropped = 1, None, 0
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
        seq = _int(record.get("seq"))
        if kind not in ("event", "done") or seq is None:
            flags.append(f"malformed record of type {_text(kind)!r} (forged or corrupted)")
            continue
        suspect = []
        if done is not None:
            suspect.append("after the launcher's final summary")
        if seq in by_seq:
            suspect.append(f"sequence number {seq} used twice")
            for other in by_seq[seq]:
                other["suspect"] = other.get("suspect") or f"sequence number {seq} used twice"
        elif seq != expected and done is None:
            suspect.append(f"sequence number {seq} where {expected} was due")
        if done is None and seq == expected:
            expected += 1
        if kind == "done":
            if done is None:
                done = record
            else:
                flags.append("more than one final summary (forged)")
            continue
        if len(events) >= MAX_EVENTS:
            host_dropped += 1
            continue
        event = _event(record, job_root, suspect)
        by_seq.setdefault(seq, []).append(event)
        events.append(event)
    flags += [f"event {e['seq']} ({e['event']}): {e['suspect']}" for e in events
              if e.get("suspect")]
    integrity = _integrity(done, events, flags, host_dropped, channel_bytes)
    if done is not None:
        _attach_module_paths(events, done.get("modules"))
    return {"audit": True, "job_root": job_root, "events": events, "integrity": integrity}


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
            "event": name, "category": category, "severity": severity_of(category, detail),
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


def _integrity(done: dict | None, events: list[dict], flags: Flags, host_dropped: int,
               channel_bytes: int) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    observed = sent = None
    if done is None:
        flags.verdict("no final summary from the launcher: the job ended the interpreter "
                     "abruptly (os._exit, a signal, a limit), closed the channel, or it "
                     "overflowed; events after that point are unknown")
    else:
        raw = done.get("dropped") if isinstance(done.get("dropped"), dict) else {}
        for key, value in list(raw.items())[:100]:
            if _int(value) is not None and value >= 0:
                dropped[_text(key) or "?"] = value
        observed, sent = _int(done.get("observed")), _int(done.get("sent"))
        honest = len([e for e in events if not e.get("suspect")])
        if sent is not None and sent != honest:
            flags.verdict(f"the launcher says it sent {sent} events; {honest} arrived "
                         "in sequence")
    if host_dropped:
        dropped["<host cap>"] = host_dropped
    if channel_bytes > CHANNEL_CAP:
        flags.verdict(f"the channel carried {channel_bytes} bytes, over detain's cap of "
                     f"{CHANNEL_CAP}: everything past the cap was counted, not read")
    return {"observed": observed, "sent": sent, "received": len(events), "dropped": dropped,
            "dropped_total": sum(dropped.values()), "channel_bytes": channel_bytes,
            "complete": done is not None and not flags, "flags": flags.as_list(),
            "flags_total": flags.total}


def _attach_module_paths(events: list[dict], modules: Any) -> None:
    """Imports name a module; where it was loaded from arrives with the final summary."""
    if not isinstance(modules, dict):
        return
    for event in events:
        if event["event"] == "import":
            path = modules.get(event["detail"].get("module"))
            if isinstance(path, str):
                event["detail"]["path"] = _text(path)
