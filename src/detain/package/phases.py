"""`detain package`: fetch on the host, pre-scan, then install / import / exercise sandboxed.

Each sandboxed phase is its own run, with a fresh sandbox and its own events; what one
phase leaves for the next crosses on the host: install's target dir comes back through
copy-out (no symlinks followed, size-capped) and is shown read-only to import. Only the
install phase has network, and only to the package index the user configured for pip
(pinned to its current addresses, see index.py); import and exercise have none. Where the
backend and host allow it (bwrap as root), every phase is in a sinkhole network by default
(net/sinkhole.py): install still reaches the index through the proxy, and whatever else a
phase tries (a setup.py posting credentials, a DNS lookup) is answered and recorded
instead of refused unseen. `--network none` turns it off. Every phase's HOME holds decoy
credentials the host planted (decoys.py): reading one, or sending its marker anywhere, is
high and makes the verdict malicious-looking.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..api import Sandbox
from ..backends.auto import Choice
from ..guest.audit import SECRET_PREFIXES
from ..guest.package_phase import CHILD_NAMES
from ..host.interpreter import find_interpreter
from ..host.tracer import on_by_default
from ..job import Job
from ..net.rules import parse_rules
from ..policy import RESERVED, SCRATCH, CopyOut, Mount, Policy
from ..report.events import with_flags
from ..report.verdict import (
    allowed_of,
    build_tool_started,
    decide,
    incomplete,
    signals,
    static_signals,
    verdict,
)
from ..result import Result
from .decoys import HOME as DECOY_HOME
from .decoys import Decoys, plant
from .fetch import fetch
from .identity import project_name
from .index import IndexConfig, pin_hosts, read_config
from .own import CHILD_LOGS, PHASE_SCRIPT, Own
from .unpack import unpack

MARKER = b"DETAIN-PHASE "
ARTIFACT_MOUNT = "/mnt/artifact"
SITE_MOUNT = "/mnt/site"
CERT_MOUNT = "/mnt/pip-cert.pem"  # pip's configured CA bundle, wherever it lies on the host
TARGET = f"{SCRATCH}/site"
Progress = Callable[[str], None]


def phase_outcome(result: Result) -> dict[str, Any] | None:
    """The phase script's closing summary line (in-process evidence), if it printed one."""
    for line in reversed(result.stdout.splitlines()[-50:]):
        if line.startswith(MARKER):
            try:
                value = json.loads(line[len(MARKER):])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def phase_report(name: str, result: Result, scan: dict[str, Any] | None = None,
                 decoys: Decoys | None = None, project: str | None = None) -> dict:
    """One phase in the package report: the common report (issue 7's schema) plus outcome."""
    from ..report.build import build_report, summarise

    report = build_report(result, scan, relative_to=SITE_MOUNT + "/", judge=False)
    for event in report["events"] if decoys is not None else ():
        mark_decoy(event, decoys)  # before Own: a decoy touched is never detain's doing
    is_own = Own(name, report["events"], allowed_of(report["policy"]))
    own = [e for e in report["events"] if is_own(e)]
    report["events"] = [e for e in report["events"] if not is_own(e)]
    setting = own_setting(project)
    unhooked = []
    for event in report["events"]:
        event["phase"] = name
        if event.get("decoy"):
            continue
        if (event.get("detail") or {}).get("unhooked"):
            event["severity"] = "high"
            unhooked.append(str((event.get("detail") or {}).get("argv") or event["summary"]))
        elif tampers(event):
            event["severity"] = "high"
            event["detail"]["tampers"] = True  # a verdict signal (verdict.py)
        elif name == "install" and build_tool_started(event):
            event["severity"] = "low"  # a compiler, git, uname: what builds run
        elif setting and event.get("category") == "env" and str(
                (event.get("detail") or {}).get("name") or "").upper().startswith(setting):
            event["severity"] = "low"  # the package's own setting (TQDM_SLACK_TOKEN)
    if unhooked:
        # its environment reads, native calls and the rest only the hook sees went unseen
        report["integrity"] = with_flags(report["integrity"], [
            f"{len(unhooked)} Python process(es) of the package ran without detain's audit "
            f"hook (-S, another interpreter, or its start-up file removed): {unhooked[0][:120]}"])
    report["verdict"] = verdict(report["events"], allowed_of(report["policy"]),
                                report["integrity"], traced(report))
    report["summary"] = summarise(report)
    stdout = MARKER.join(result.stdout.rsplit(MARKER, 1)[:1]) if MARKER in result.stdout \
        else result.stdout
    return {"phase": name, "status": result.status, "error": result.error,
            "seconds": result.wall_seconds, "backend": result.backend,
            "outcome": phase_outcome(result), "egress": result.behaviour.get("egress"),
            "sinkhole": result.behaviour.get("sinkhole"),
            "omitted_own_events": len(own),
            "report": report,
            "output_tail": (stdout[-2000:] + result.stderr[-3000:]).decode("utf-8",
                                                                             "replace")}


def tampers(event: dict[str, Any]) -> bool:
    """Whether the package wrote, moved or removed what detain put in its sandbox to watch
    it (the child hook's start-up files, its logs) or the install venv detain made (its
    `bin/activate`, its `python3`: what every later command there runs): only detain's
    own processes may."""
    detail = event.get("detail") or {}
    where = f"{detail.get('path') or ''} {detail.get('target') or ''}"
    return event.get("category") == "file-write" and (
        any(name in where for name in CHILD_NAMES) or CHILD_LOGS in where
        or INSTALL_VENV in where)


INSTALL_VENV = f"{SCRATCH}/venv/"  # package_phase.py's


def traced(report: dict[str, Any]) -> bool:
    """Whether the outside tracer watched the phase (its assurance says so)."""
    return "outside_trace" in (report.get("assurance") or {})


def own_setting(project: str | None) -> str | None:
    """The prefix of the package's own environment settings (tqdm -> TQDM_), unless it is
    a credential family's (a package named `aws` gets no AWS_ pass)."""
    if not project:
        return None
    prefix = project.upper().replace("-", "_") + "_"
    return None if prefix.startswith(SECRET_PREFIXES) else prefix


def mark_decoy(event: dict[str, Any], decoys: Decoys) -> None:
    """Tag an event that touched a planted decoy, a file or a variable (`decoy: read`), or
    carried its marker (`decoy: sent`): high, whatever its category's usual severity."""
    detail = event.get("detail") or {}
    path = str(detail.get("path") or detail.get("target") or "")
    if event.get("category") in ("file-read", "file-write", "fd") and decoys.is_decoy(path):
        event.update(decoy="read", severity="high")
    elif event.get("category") == "env" and decoys.is_secret(str(detail.get("name") or "")):
        event.update(decoy="read", severity="high")
    elif event.get("category") in ("network", "process") and decoys.carried_by(event):
        event.update(decoy="sent", severity="high")


def _index_access(config: IndexConfig, policy: Policy) -> tuple[tuple[Mount, ...], list[str]]:
    """Read-only mounts for local index dirs, and the pip options that point at them."""
    mounts, options = [], []
    local = {str(d) for d in config.local_dirs
             if not any(str(d) == r or str(d).startswith(r.rstrip("/") + "/")
                        for r in RESERVED if r != "/")}
    mounts = [Mount(Path(d), d) for d in sorted(local)]
    usable = [u for u in config.index_urls if not u.startswith("file:")
              or any(u[len("file://"):].startswith(d) for d in local)]
    if usable:
        options += ["--index-url", usable[0]]
        for url in usable[1:]:
            options += ["--extra-index-url", url]
    if config.cert:
        mounts.append(Mount(Path(config.cert), CERT_MOUNT))
        options += ["--cert", CERT_MOUNT]
    for link in config.find_links:
        if link.startswith(("http://", "https://")) or any(
                link.removeprefix("file://").startswith(d) for d in local):
            options += ["--find-links", link]
    return tuple(mounts), options


def install(artifact: Path, policy: Policy, config: IndexConfig, work: Path,
            scan: dict[str, Any] | None = None, decoys: Decoys | None = None) -> dict:
    out = work / "installed"
    out.mkdir()
    index_mounts, pip_options = _index_access(config, policy)
    source = artifact if artifact.is_dir() else artifact.parent
    inside = ARTIFACT_MOUNT if artifact.is_dir() else f"{ARTIFACT_MOUNT}/{artifact.name}"
    allow = policy.allow_hosts or parse_rules(pin_hosts(config.hosts))
    # pip's own subprocess that installs build requirements is not handed --cert: requests
    # (inside pip) takes the bundle from the environment there
    cert_env = {"REQUESTS_CA_BUNDLE": CERT_MOUNT} if config.cert else {}
    phase_policy = replace(policy, allow_hosts=allow, env={**policy.env, **cert_env},
                           mounts=(*policy.mounts, Mount(source, ARTIFACT_MOUNT), *index_mounts),
                           copy_out=(CopyOut(TARGET, out),))
    job = Job.script(PHASE_SCRIPT, "install", TARGET, inside, *pip_options)
    result = Sandbox(phase_policy).run(job)
    report = phase_report("install", result, scan, decoys, project_name(artifact))
    report["site"] = out  # copy-out puts the dir's contents in `out` itself
    return report


def run_code(name: str, site: Path, policy: Policy, seconds: float,
             scan: dict[str, Any] | None = None, decoys: Decoys | None = None,
             project: str | None = None) -> dict:
    """The import (or exercise) phase. `project` (the vetted package's name, as the host
    knows it) lets the phase tell its dependencies' files from the package's own."""
    phase_policy = replace(policy, allow_hosts=(), copy_out=(),
                           mounts=(*policy.mounts, Mount(site, SITE_MOUNT)))
    job = Job.script(PHASE_SCRIPT, name, SITE_MOUNT, str(seconds),
                     *([project] if project else []))
    return phase_report(name, Sandbox(phase_policy).run(job), scan, decoys, project)


def with_decoys(policy: Policy, decoys: Decoys) -> Policy:
    """Every phase's policy: the decoy HOME shown read-only, its variables set (the
    user's own --env wins over a decoy of the same name)."""
    return replace(policy, mounts=(*policy.mounts, decoys.mount()),
                   env={**decoys.environment(), **policy.env})


def vet(spec: str, policy: Policy, *, exercise: bool = False, seconds: float = 10.0,
        progress: Progress | None = None, sinkhole: bool | None = None) -> dict[str, Any]:
    """The whole package report for `spec`: fetch, scan, install, import (, exercise).

    `sinkhole`: None (the default) puts every phase in the sinkhole where supported."""
    from ..net.sinkhole import supported
    from ..scan import scan
    from ..scan.checks import check_installed

    say = progress or (lambda _text: None)
    config = read_config()
    choice = None
    if policy.backend == "auto":
        # One backend for every phase, so their events compare: install needs the index
        # proxy (a network namespace), and the sinkhole too where one can have it.
        choice = _choose(policy, sinkhole)
        policy = replace(policy, backend=choice.backend)
    if sinkhole is None:
        sinkhole = policy.sinkhole or supported(policy.backend)
    policy = replace(policy, sinkhole=sinkhole)
    rest = "; everything else to the sinkhole" if sinkhole else ""
    policy = on_by_default(policy)  # every process of install and import, seen from outside
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="detain-package-") as tmp:
        work = Path(tmp)
        (work / "fetch").mkdir()
        say(f"fetch {spec} (host: download only)")
        artifact = fetch(spec, work / "fetch", config, find_interpreter(policy.python).version)
        fetched = {"phase": "fetch", "artifact": artifact.name,
                   "kind": "directory" if artifact.is_dir() else (
                       "wheel" if artifact.name.endswith(".whl") else "sdist"),
                   "sha256": None if artifact.is_dir() else
                   hashlib.sha256(artifact.read_bytes()).hexdigest(),
                   "seconds": round(time.monotonic() - started, 3)}
        say(f"scan {artifact.name} (static, nothing runs)")
        static = scan(unpack(artifact, work / "unpacked"))
        decoys = plant(work / "decoys").without(policy.env)
        policy = with_decoys(policy, decoys)
        say(f"install (sandboxed; network: the package index only{rest}; decoy credentials "
            f"in {DECOY_HOME})")
        installed = install(artifact, policy, config, work, static, decoys)
        project = project_name(artifact)
        phases = [installed]
        site = installed.pop("site")
        if site.is_dir():  # what runs unasked, whichever distribution put it there
            installed["placed"] = check_installed(site)
        if installed["status"] == 0 and site.is_dir():
            say(f"import every module (sandboxed; {'sinkhole' if sinkhole else 'no'} network)")
            phases.append(run_code("import", site, policy, seconds, static, decoys, project))
            if exercise:
                say("exercise public functions (sandboxed; "
                    f"{'sinkhole' if sinkhole else 'no'} network)")
                phases.append(run_code("exercise", site, policy, seconds, static, decoys,
                                       project))
    return {"spec": spec, "fetch": fetched, "scan": static, "phases": phases,
            "verdict": package_verdict(phases, static),
            "decoys": decoys.describe(),
            "backend_choice": choice.describe() if choice else None,
            "seconds": round(time.monotonic() - started, 3),
            "index": {"urls": config.index_urls, "hosts": config.hosts}}


def _choose(policy: Policy, sinkhole: bool | None) -> Choice:
    """`auto` for every phase: the index proxy is needed; the sinkhole is wanted unless
    turned off, and given up (said in the reason) where no backend here has it."""
    from ..backends import probe
    from ..backends.auto import Needs, pick
    from ..errors import BackendUnavailable

    needs = replace(Needs.of(policy), allow_list=True)
    if sinkhole is not False:
        try:
            return pick("auto", policy.min_level, replace(needs, sinkhole=True), probe)
        except BackendUnavailable:
            if sinkhole:
                raise
    chosen = pick("auto", policy.min_level, needs, probe)
    return replace(chosen, reason=chosen.reason + "; no backend here has a sinkhole network")


def package_verdict(phases: list[dict[str, Any]],
                    static: dict[str, Any] | None = None) -> dict[str, Any]:
    """One verdict over every phase, each phase's events judged by its own policy (what
    install may reach, import may not), and over the malware pre-scan: a high-severity
    indicator of detain's own triage rules (not bandit's injection checks) in code that is
    installed counts like behaviour seen, for code that hides until it is used (a hook pip
    never runs, a dependency missing here, a platform this is not)."""
    found = [s for phase in phases for s in signals(
        phase["report"]["events"], allowed_of(phase["report"]["policy"]))]
    lost = [s for phase in phases
            for s in incomplete(phase["report"].get("integrity"), traced(phase["report"]))]
    placed = static_signals({"findings": [f for p in phases for f in p.get("placed", [])]})
    return decide(found + lost + static_signals(static) + placed)
