"""One verdict for a run or a vetted package: clean, suspicious or malicious-looking.

A security engineer deciding whether to trust a dependency wants one answer and why, not a
table of events. The verdict is computed from the report's events only (static findings
flag injection bugs in benign code as often as malware, so they do not decide it), from
any source alike: the in-process audit hook, the host's proxy, a tracer outside the job
(`kernel/runtime`). What makes it *malicious-looking*, each a high signal:

* credentials or keys read: ~/.aws, ~/.ssh, .netrc, keyrings, browser profiles, secret
  environment variables; above all a decoy `detain package` planted (an event tagged
  `decoy: read`), or the decoys' marker found in traffic or a command line (`decoy: sent`);
* egress attempted: a connection, datagram or name lookup towards a host the policy did not
  allow (the in-sandbox proxy forwarder itself is the way out, not a destination);
* a process other than the build's own: curl, sh ... (compilers, build tools, git and
  Python are what builds run);
* persistence: writes to shell start-up files, cron, systemd user units, autostart,
  sitecustomize/usercustomize or a .pth file where Python runs it (a site dir).
* code forged: a code object the code under test made under a stdlib, dependency or
  detain file's name (`code.forged`), whose only use is to pass for that code.

*Suspicious* is weaker behaviour with benign uses: loading a native library with ctypes,
adding an audit hook, listening on a socket, a tampered audit channel or any record that is
not all that happened (`incomplete`: a flood is how a job would hide its deed), traffic the
sinkhole's recorder could only count (`sinkhole.lost`: a flood is how a job would hide what
it sent). Anything else is *clean*.

Walking the whole environment is no signal on its own: configuration libraries scan it for
their prefix (tqdm's TQDM_*, distutils), and what would make it harmful, the values leaving,
is caught where it happens (the decoy variables' marker in traffic, egress). An event that
makes a run malicious-looking is high in the report's table too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..net.session import PROXY_PORT
from ..policy import SCRATCH
from .events import PROC_ENVIRON, SENSITIVE

CLEAN, SUSPICIOUS, MALICIOUS = "clean", "suspicious", "malicious-looking"
LEVELS = (CLEAN, SUSPICIOUS, MALICIOUS)
MAX_REASONS = 3
CREDENTIALS = (*SENSITIVE, "/.config/gcloud", "/.azure/", "/.npmrc", "/.config/gh/",
               "/.local/share/keyrings", "/.password-store", "/.mozilla/firefox",
               "/.config/google-chrome", "/.config/chromium", "/.config/BraveSoftware",
               "Library/Keychains", "/.gnupg/", "/.vault-token", "/etc/gshadow")
PERSISTENCE = re.compile(
    r"(/\.(bashrc|bash_profile|bash_login|profile|zshrc|zprofile|zshenv|xprofile|xinitrc)$"
    r"|/\.config/(fish/config\.fish|autostart(/|$)|systemd/user(/|$))|^/etc/(profile\.d/|cron|"
    r"systemd/|rc\.local|ld\.so\.preload)|/var/spool/cron|crontab|/\.ssh/authorized_keys"
    r"|/Library/LaunchAgents/"
    # what Python runs at start-up: a site dir's .pth files and sitecustomize, the stdlib's
    r"|-packages/[^/]+\.pth$"
    # and a sitecustomize/usercustomize anywhere: a .pth line can put any dir on sys.path
    r"|/(sitecustomize|usercustomize)(\.py|\.pyc|/__init__\.py)$)")
# The same places as substrings, for the outside tracer (host/tracer.py), which keeps a
# write to any of them in its reserve: a superset of what PERSISTENCE matches, so no flood
# pushes a persistence write out before the verdict sees it (test_verdict checks the two).
PERSISTENCE_MARKS = (".bashrc", ".bash_profile", ".bash_login", ".profile", ".zshrc",
                     ".zprofile", ".zshenv", ".xprofile", ".xinitrc", "config.fish",
                     "/.config/autostart", "/.config/systemd/user", "/etc/profile.d", "cron",
                     "/etc/systemd/", "rc.local", "ld.so.preload", "authorized_keys",
                     "LaunchAgents", "sitecustomize", "usercustomize", ".pth")
BUILD_TOOLS = re.compile(
    r"^(python[0-9.]*|pip[0-9.]*|cc|c\+\+|gcc|g\+\+|clang|clang\+\+|ld|ld\.\w+|ar|as|ranlib|"
    r"strip|nm|objcopy|objdump|readelf|patchelf|cc1|cc1plus|cc1obj|collect2|lto1|lto-wrapper|"
    r"(x86_64|aarch64|i686)-[\w-]*-(gcc|g\+\+|cc|"
    r"ld|ar|c\+\+)(-[0-9.]+)?|(gcc|g\+\+|cpp)-[0-9.]+|cmake|ctest|make|gmake|ninja|meson|"
    r"pkg-config|pkgconf|cython|swig|gfortran|f2py|nvcc|rustc|cargo|go|git|hg|uname|"
    r"ldconfig|lsb_release|sw_vers|xcrun|which|"
    # what platform probes (lsb_release, a configure script) run: text tools, no network
    r"getopt|cut|tr|sed|grep|egrep|awk|head|tail|cat|sort|uniq|basename|dirname|expr|id|"
    r"ldd|file|true|false|test|\[)$")
# Where the programs builds run live: the system's, package_phase.py's venv (made by
# detain), and pip's build env (the build requirements pip installed: cmake, ninja ...).
SYSTEM_PROGRAMS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/",
                   f"{SCRATCH}/venv/bin/", f"{SCRATCH}/tmp/pip-build-env-")
# What works around the in-process audit hook: what it hides stays unseen, so suspicious
HOOK_SIGNALS = {
    "gc.get_referents": ("objects read behind the audit hook", "gc.get_referents"),
    "gc.get_referrers": ("objects read behind the audit hook", "gc.get_referrers"),
    "gc.get_objects": ("objects read behind the audit hook", "gc.get_objects"),
    "cpython.PyInterpreterState_New": ("subinterpreter started, without the audit hook",
                                       "a new interpreter in the process"),
}
# CPython's test and subinterpreter modules: no package needs them, and they run code
# where the audit hook is not (`_testcapi.run_in_subinterp` raises no event at all)
AROUND_THE_HOOK = ("_testcapi", "_testinternalcapi", "_xxsubinterpreters",
                   "_xxinterpchannels", "_testmultiphase", "_testsinglephase")
SHELL_SYNTAX = re.compile(r"[|;&<>$`]")
MODE_SUFFIX = re.compile(r" mode [0-7]+$")  # outside_trace.py's chmod targets
DELETIONS = ("unlink", "remove", "rmdir", "rmtree")
BUILD_ENV = "/pip-build-env-"  # pip's isolated build env: its own sitecustomize, setuptools' .pth
PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                  "pty.spawn", "os.startfile", "execve", "exec")
EGRESS_EVENTS = ("socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                 "socket.gethostbyname", "socket.gethostbyname_ex", "urllib.Request",
                 "http.client.connect", "ftplib.connect", "smtplib.connect",
                 "telnetlib.Telnet.open")
# the proxy's, the sinkhole's and the outside tracer's (connect/sendto with an address)
EGRESS_PREFIXES = ("proxy.", "dns.", "sinkhole.", "kernel.connect", "kernel.sendto",
                   "kernel.sendmsg")
ADDRESS = re.compile(r"^\(?'?\"?([^'\",()]+)'?\"?,\s*(\d+)")  # ('host', 80) as the hook says
HOST_PORT = re.compile(r"^(?:\[([0-9a-fA-F:.]+)\]|([^\s:\[\]]+)):(\d+)$")  # host:80, [v6]:80


def verdict(events: list[dict[str, Any]], allowed: list[str] | None = None,
            integrity: dict[str, Any] | None = None, traced: bool = False) -> dict[str, Any]:
    """{level, reasons (at most 3, strongest first), signals (how many of each)} for events.

    `allowed`: the hosts the run's policy let through (rules as `str(HostRule)` gives
    them); reaching them is not egress. An event that makes a run malicious-looking is
    high severity in the report too, whatever its category's usual one (a .pth written is
    a file write, medium, but persistence): the table and the verdict never disagree."""
    mark_dropped(events)
    walks = _walks(events)
    for event in events:
        if _in_walk(event, walks):
            event["severity"] = "medium"  # a name read by copying the environment: the walk's
    found = []
    for event, signal in _signals(events, allowed or [], walks):
        if signal["level"] == MALICIOUS:
            event["severity"] = "high"
        found.append(signal)
    return decide(found + incomplete(integrity, traced))


# Event kinds whose loss hides no signal: a flood of imports or compiles hides only more of
# the same (each kind has its own budget in the hook).
HARMLESS_DROPS = ("import", "compile", "exec", "marshal.loads", "marshal.load",
                  "pickle.find_class")


def credentials(path: str) -> bool:
    """Whether a path is where credentials are kept (a process's environ among them)."""
    return any(c in path for c in CREDENTIALS) or bool(PROC_ENVIRON.match(path))


def telling(path: str) -> bool:
    """Whether a file path alone makes its read or write a signal (credentials,
    persistence): such events are kept past listing caps."""
    return bool(PERSISTENCE.search(path)) or credentials(path)


# Losses that cannot hide a signal: listing caps keep every telling path past them, the
# tracer's cap keeps execs, connections and credential or persistence paths in reserve.
HARMLESS_FLAGS = ("are not listed", "none of them an exec")


FILE_KINDS = ("open", "os.remove", "os.unlink", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
              "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
              "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move",
              "shutil.make_archive", "shutil.unpack_archive")


def _kind(key: Any) -> str:
    """The event kind of a `dropped` key (a forked process's or a child's are prefixed)."""
    text = str(key)
    if text.startswith("forked process "):
        text = text.rpartition(": ")[2]
    return text.removeprefix("child ")


def incomplete(integrity: dict[str, Any] | None, traced: bool = False
               ) -> list[dict[str, str]]:
    """A signal when what was observed is not all that happened: a budget or cap filled
    (a flood is how a job would push its deed out of the record), a record forged or
    missing, the launcher's summary absent. Never clean then; suspicious, with the first
    reason. `traced`: the outside tracer watched the run, and its reserve keeps every
    credential and persistence path: file events the hook's budget lost (a big honest build
    fills it) then hide nothing."""
    if not isinstance(integrity, dict) or integrity.get("complete") is not False:
        return []
    flags = [str(f) for f in integrity.get("flags") or []
             if not any(h in str(f) for h in HARMLESS_FLAGS)]
    dropped = integrity.get("dropped") if isinstance(integrity.get("dropped"), dict) else {}
    lost = sorted({_kind(k) for k, n in dropped.items() if isinstance(n, int) and n > 0}
                  - set(HARMLESS_DROPS) - (set(FILE_KINDS) if traced else set()))
    if not flags and not lost:
        return []
    what = flags[0] if flags else f"events past the audit hook's budget: {', '.join(lost[:4])}"
    return [{"level": SUSPICIOUS, "kind": "evidence incomplete",
             "text": f"evidence incomplete: {what[:200]}"}]


def _walks(events: list[dict[str, Any]]) -> set[tuple[Any, Any, Any]]:
    """Where the whole environment was walked: (file, line, phase)."""
    return {(e.get("file"), e.get("line"), e.get("phase")) for e in events
            if e.get("category") == "env" and "name" not in (e.get("detail") or {})}


def _in_walk(event: dict[str, Any], walks: set[tuple[Any, Any, Any]]) -> bool:
    """A credential-looking name read on a line that walked the environment (dict(os.environ)
    reads every name once): part of that walk, not a targeted read."""
    return event.get("category") == "env" and "name" in (event.get("detail") or {}) and (
        event.get("file"), event.get("line"), event.get("phase")) in walks


def allowed_of(policy: dict[str, Any]) -> list[str]:
    """The hosts a Result's policy let through (the package index during install)."""
    network = policy.get("network") if isinstance(policy, dict) else None
    return [str(rule) for rule in network.get("allow") or []] if isinstance(
        network, dict) else []


def signals(events: list[dict[str, Any]], allowed: list[str]) -> list[dict[str, str]]:
    """Every signal the events give: {level, kind, text}, in event order."""
    return [signal for _event, signal in _signals(events, allowed)]


def _signals(events: list[dict[str, Any]], allowed: list[str],
             walks: set[tuple[Any, Any, Any]] | None = None
             ) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(event, signal) for every event that gives one, in event order."""
    found = []
    walks = _walks(events) if walks is None else walks
    for event in events:
        signal = None if _in_walk(event, walks) else _signal(event, allowed)
        if signal is not None:
            level, kind, what = signal
            where = _where(event)
            text = f"{kind}: {what}" + (f" ({where})" if where else "")
            found.append((event, {"level": level, "kind": kind, "text": text}))
    return found


def static_signals(scan: dict[str, Any] | None) -> list[dict[str, str]]:
    """High findings of detain's own malware triage (scan/malware.py and its tables) as
    malicious-looking signals; bandit's, written for injection bugs, are left out."""
    found = []
    for finding in (scan or {}).get("findings", []):
        if finding.get("severity") == "high" and finding.get("tool") == "detain":
            where = f"{finding.get('file')}:{finding.get('line')}" if finding.get("file") else ""
            text = str(finding.get("message") or finding.get("rule"))[:160]
            found.append({"level": MALICIOUS, "kind": "static",
                          "text": f"static: {text}" + (f" ({where})" if where else "")})
    return found


def decide(found: list[dict[str, str]]) -> dict[str, Any]:
    """The level and the top reasons of a list of signals (one phase's or several)."""
    high = [s for s in found if s["level"] == MALICIOUS]
    level = MALICIOUS if high else SUSPICIOUS if found else CLEAN
    ranked = high + [s for s in found if s["level"] != MALICIOUS]
    reasons: list[str] = []
    for pass_ in range(2):  # one reason per kind first, then the rest in order
        kinds = {r.split(":", 1)[0] for r in reasons}
        for signal in ranked:
            if len(reasons) >= MAX_REASONS:
                break
            if signal["text"] not in reasons and (pass_ or signal["kind"] not in kinds):
                reasons.append(signal["text"])
                kinds.add(signal["kind"])
    counts: dict[str, int] = {}
    for signal in found:
        counts[signal["kind"]] = counts.get(signal["kind"], 0) + 1
    return {"level": level, "reasons": reasons, "signals": counts}


def line(result: dict[str, Any]) -> str:
    """The one line a command ends with."""
    reasons = result.get("reasons") or []
    return f"verdict: {result['level']}" + (f" — {'; '.join(reasons)}" if reasons else "")


def line_for(result: Any, scan: dict[str, Any] | None = None) -> str:
    """The verdict line of a finished run (a Result), for commands that built no report."""
    from .build import build_report

    return line(build_report(result, scan)["verdict"])


def as_html(result: dict[str, Any] | None) -> str:
    """The verdict as one HTML paragraph (escaped), or "" for a report without one."""
    if not result:
        return ""
    from html import escape

    items = "".join(f"<li>{escape(reason)}</li>" for reason in result.get("reasons") or [])
    return (f'<p id="verdict" class="verdict-{escape(result["level"])}"><b>verdict: '
            f'{escape(result["level"])}</b></p>' + (f"<ul>{items}</ul>" if items else ""))


def _where(event: dict[str, Any]) -> str:
    parts = []
    if event.get("file"):
        parts.append(f"{event['file']}:{event.get('line') or '?'}")
    if event.get("phase"):
        parts.append(str(event["phase"]))
    if event.get("provenance") and event["provenance"] != "in-process":
        parts.append(str(event["provenance"]))
    return ", ".join(parts)


def _signal(event: dict[str, Any], allowed: list[str]) -> tuple[str, str, str] | None:
    category, name = event.get("category"), str(event.get("event"))
    detail = event.get("detail") or {}
    path = str(detail.get("path") or detail.get("target") or "")  # hook's, tracer's
    if event.get("decoy") == "read":
        return MALICIOUS, "decoy credentials read", path or f"environment variable " \
                                                          f"{detail.get('name')}"
    if detail.get("tampers"):
        return MALICIOUS, "detain's sandbox tampered with", path or str(
            event.get("summary"))[:160]
    if event.get("decoy") == "sent":
        return MALICIOUS, "decoy credentials sent", str(event.get("summary") or name)[:160]
    if name == "code.forged":
        return MALICIOUS, "code forged", f"code object made under the name " \
                                         f"{detail.get('filename')}"
    if category == "env":
        if "name" in detail and event.get("severity") == "high":  # a credential's name
            return MALICIOUS, "secret read", f"environment variable {detail['name']}"
        return None
    if category == "file-write" and not any(w in name for w in DELETIONS):
        target = str(detail.get("target") or "")
        hit = next((p for p in (path, target) if PERSISTENCE.search(p)
                    and BUILD_ENV not in p), None)
        if hit:
            return MALICIOUS, "persistence", f"write to {hit}"
    if category in ("file-read", "file-write") and credentials(path):
        return MALICIOUS, "credentials read", path
    if category == "process" and name.rpartition("kernel.")[2] in PROCESS_EVENTS:
        program = _program(detail)
        if program is not None and not build_tool_started(event):
            argv = str(detail.get("argv") or detail.get("command") or "")[:120]
            return MALICIOUS, "process started", f"{program} {argv}".strip()
        return None
    if name == "sinkhole.lost":
        return SUSPICIOUS, "recorder overwhelmed", str(event.get("summary"))[:200]
    if category == "network":
        return _network(name, detail, allowed)
    if category == "native":
        return SUSPICIOUS, "native code", event.get("summary") or name
    if category == "hook":
        return SUSPICIOUS, *HOOK_SIGNALS.get(name, ("audit hook added", name))
    if name == "import" and str(detail.get("module")).split(".")[0] in AROUND_THE_HOOK:
        return SUSPICIOUS, "interpreter internals loaded", (
            f"{detail.get('module')}: runs code in a subinterpreter, which has no audit hook")
    return None


def is_build_tool(program: str) -> bool:
    """Whether a program is one builds run (a compiler, git, uname, Python ...): by its
    name, and installed where the system keeps programs (or named bare, found on PATH) or
    the install phase's own venv; a `gcc` the package dropped in its build dir is not."""
    if not BUILD_TOOLS.match(os.path.basename(program)):
        return False
    return "/" not in program or program.startswith(SYSTEM_PROGRAMS)


def build_tool_started(event: dict[str, Any]) -> bool:
    """Whether a process event starts a build tool (see is_build_tool): never a program
    written during the run (`written_by_run`: a `gcc` put in the venv's bin)."""
    detail = event.get("detail") or {}
    program = _program(detail) if event.get("category") == "process" else None
    return program is not None and is_build_tool(program) and not detail.get("written_by_run")


def mark_dropped(events: list[dict[str, Any]],
                 detains: Callable[[dict[str, Any]], bool] = lambda _event: False) -> None:
    """Mark `written_by_run` each process event that runs a file a file event of the run
    wrote, created, renamed or linked, unless detain did (`detains`: its venv's python,
    its pip installing a build requirement's `cmake`, are not the package dropping one)."""
    written = set()
    for event in events:
        detail = event.get("detail") or {}
        if event.get("category") != "file-write" or detains(event):
            continue
        for value in (detail.get("path"), detail.get("target")):
            for part in str(value or "").split(" -> "):
                written.add(MODE_SUFFIX.sub("", part))
    written.discard("")
    for event in events:  # judged afresh each time: `detains` may differ
        detail = event.get("detail") or {}
        if event.get("category") == "process" and written and (
                _program(detail) in written or detail.get("target") in written):
            detail["written_by_run"] = True
        else:
            detail.pop("written_by_run", None)


def _program(detail: dict[str, Any]) -> str | None:
    """The program a process event starts: its executable, or the first word of a shell
    command (os.system runs /bin/sh, whose command line names the real program)."""
    command = detail.get("command")
    if command and SHELL_SYNTAX.search(str(command)):
        return "sh"  # redirections, pipes, lists: the shell is the program, not a probe
    if command:
        try:
            words = shlex.split(str(command))
        except ValueError:
            words = str(command).split()
        return words[0] if words else "sh"
    executable = (detail.get("executable") or detail.get("path") or detail.get("target")
                  or detail.get("argv"))
    return str(executable) if executable not in (None, "") else None


def _network(name: str, detail: dict[str, Any], allowed: list[str]) -> tuple[str, str, str] | None:
    if detail.get("allowed") is True:
        return None
    if detail.get("allowed") is False:
        return MALICIOUS, "egress attempted", f"{detail.get('host')}:{detail.get('port')} " \
                                              "(refused)"
    if name not in EGRESS_EVENTS and not name.startswith(EGRESS_PREFIXES):
        return None
    host, port = _destination(detail)
    if host is None or _is_allowed(host, port, allowed):
        return None
    return MALICIOUS, "egress attempted", f"{name} {host}" + (f":{port}" if port else "")


def _destination(detail: dict[str, Any]) -> tuple[str | None, int | None]:
    if detail.get("url"):
        parts = urlsplit(str(detail["url"]))
        return parts.hostname, parts.port
    if detail.get("host") not in (None, ""):
        return str(detail["host"]), _port(detail.get("port"))
    match = ADDRESS.match(str(detail.get("address") or ""))
    if match:
        return match.group(1), int(match.group(2))
    match = HOST_PORT.match(str(detail.get("target") or ""))
    if match:
        return match.group(1) or match.group(2), int(match.group(3))
    return None, None


def _port(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _is_allowed(host: str, port: int | None, allowed: list[str]) -> bool:
    """Reaching the in-sandbox proxy forwarder, or a host the policy allows."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback and port == PROXY_PORT:
        return True
    for rule in allowed:
        rule_host, _, rule_port = rule.rpartition(":") if rule.count(":") == 1 else (rule, "",
                                                                                      "")
        if rule_port and port is not None and str(port) != rule_port:
            continue
        if host == rule_host or (rule_host.startswith("*.") and host.endswith(rule_host[1:])):
            return True
    return False
