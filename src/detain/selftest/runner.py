"""Run probes against backends and collect the host's verdicts.

Harmless probes run a few at a time; the dangerous ones (fork bomb, kill(-1), floods,
memory) run one by one and only on a backend of level >= 1 that has already contained
every harmless probe in this same battery, so a backend that leaks is never handed
something that could take the host down.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config import configure
from ..errors import DetainError
from ..job import Job
from ..policy import Policy
from . import hostview
from .bait import Bait, Session
from .model import (
    CONTAINED,
    ERROR,
    ESCAPED,
    NOT_APPLICABLE,
    PROBES,
    READY,
    Attack,
    NotApplicable,
    Outcome,
    Probe,
    Verdict,
    program,
)

DEFAULT_TIMEOUT = 15
PRELUDE_OK = "DETAIN-SELFTEST-PRELUDE-OK"


@dataclass
class Target:
    """One backend under test; `mounts` says whether it can show host dirs inside."""

    name: str
    level: int
    backend: Any
    mounts: bool = False


@dataclass
class TargetReport:
    """One backend's verdicts. `not_comparable` says why none of its probes could run
    their attack at all (a perfect score there would mean nothing)."""

    target: Target
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    seconds: float = 0.0
    not_comparable: str | None = None

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.verdicts.values())

    @property
    def clean(self) -> bool:
        return not self.count(ESCAPED) and not self.count(ERROR)


OnVerdict = Callable[[Target, Probe, Verdict], None]


def run_trial(probe: Probe, target: Target, session: Session) -> Verdict:
    """Plan, run and judge one probe on one backend; bait is removed whatever happens."""
    started = time.monotonic()
    bait = Bait(session, target.mounts)
    try:
        attack: Attack | None = probe.plan(bait)
        found = []
        while attack is not None:
            outcome = _execute(attack, target, bait)
            found.append(_survivors(bait.tag))
            found.append(attack.check(outcome))
            attack = attack.follow_up
        found = [item for item in found if item]
        verdict = Verdict(ESCAPED, "; ".join(found)) if found else Verdict(CONTAINED)
    except NotApplicable as exc:
        verdict = Verdict(NOT_APPLICABLE, str(exc))
    except Exception as exc:  # a probe or judge bug must show as such, not stop the battery
        verdict = Verdict(ERROR, f"{type(exc).__name__}: {exc}")
    finally:
        _survivors(bait.tag)
        bait.close()
    verdict.seconds = round(time.monotonic() - started, 2)
    return verdict


def _execute(attack: Attack, target: Target, bait: Bait) -> Outcome:
    settings: dict[str, Any] = {"timeout": DEFAULT_TIMEOUT, **attack.settings}
    if attack.mounts and target.mounts:
        settings["mount"] = list(attack.mounts)
    policy, _ = configure(overrides=settings, user_config=False, project_dir=attack.project)
    watch = _Watch(attack, bait.tag) if attack.observe is not None else None
    if attack.script is not None:
        job = Job.script(attack.script, bait.tag)
    else:
        job = Job.code(attack.code)
    started = time.monotonic()
    result = error = None
    try:
        result = target.backend.run(job, policy, stdout=watch.sink if watch else None,
                                    label=bait.tag)
    except DetainError as exc:
        error = str(exc)
    if watch and watch.failure is not None:
        raise watch.failure
    return Outcome(result, error, time.monotonic() - started,
                   watch.observed if watch else None)


class _Watch:
    """Runs `attack.observe` when the job prints READY, then tells the job to go on."""

    def __init__(self, attack: Attack, tag: str) -> None:
        self.observe = attack.observe
        self.tag = tag
        self.observed: Any = None
        self.failure: Exception | None = None
        self._tail = b""
        self._done = False

    def sink(self, chunk: bytes) -> None:
        if self._done:
            return
        window = self._tail + chunk
        if READY.encode() in window:
            self._done = True
            try:
                self.observed = self.observe()
            except Exception as exc:
                self.failure = exc
            for proc in hostview.job_processes(self.tag):
                if proc.alive and proc.comm.startswith("python"):
                    with contextlib.suppress(OSError):
                        os.kill(proc.pid, signal.SIGUSR1)
        self._tail = window[-len(READY):]


def _survivors(tag: str) -> str | None:
    """Job processes still alive after the run: reported, then killed."""
    alive = [p for p in hostview.job_processes(tag) if p.alive]
    for proc in alive:
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)
    if alive:
        return f"{len(alive)} job process(es) outlived the run ({alive[0].comm}, pid " \
               f"{alive[0].pid})"
    return None


def supports_mounts(target: Target, session: Session) -> bool:
    """Whether the backend can show a host dir inside (some have no mount namespace)."""
    try:
        policy = Policy().merge({"mount": [f"{session.root}:{session.root}"],
                                 "timeout": DEFAULT_TIMEOUT}, "selftest")
        result = target.backend.run(Job.code("pass"), policy)
    except DetainError:
        return False
    return result.error is None and result.status == 0


def run_target(target: Target, session: Session, *, probes: list[Probe] | None = None,
               workers: int = 3, on_verdict: OnVerdict | None = None) -> TargetReport:
    """The battery on one backend: harmless probes concurrently, then the gated ones."""
    probes = PROBES if probes is None else probes
    report = TargetReport(target)
    started = time.monotonic()
    _warn_once(target)
    target.mounts = supports_mounts(target, session)

    def record(probe: Probe, verdict: Verdict) -> None:
        report.verdicts[probe.id] = verdict
        if on_verdict is not None:
            on_verdict(target, probe, verdict)

    report.not_comparable = prelude_fails(target)
    if report.not_comparable:
        for probe in probes:
            record(probe, Verdict(NOT_APPLICABLE, report.not_comparable))
        report.seconds = round(time.monotonic() - started, 1)
        return report

    harmless = [p for p in probes if not p.dangerous]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(p, pool.submit(run_trial, p, target, session)) for p in harmless]
        for probe, future in futures:
            record(probe, future.result())
    refusal = _gate(target, report)
    for probe in (p for p in probes if p.dangerous):
        record(probe, Verdict(NOT_APPLICABLE, refusal) if refusal
               else run_trial(probe, target, session))
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _warn_once(target: Target) -> None:
    """A backend that warns at every run (venv: "not a security boundary") says it once
    for the whole battery, not once per probe above the matrix."""
    warning = getattr(target.backend, "run_warning", None)
    if warning:
        print(warning, file=sys.stderr)
        target.backend = copy.copy(target.backend)
        target.backend.run_warning = None


def prelude_fails(target: Target) -> str | None:
    """Why no probe can run its attack on this backend, or None when they can.

    Every probe starts with the same prelude (`import os, sys`); a backend that refuses
    it (restricted: RestrictedPython allows a few stdlib imports) stops every probe
    before its attack, and "contained" would only mean "never tried". A backend that
    fails to start is left to the probes, which report it as errors."""
    policy = Policy().merge({"timeout": DEFAULT_TIMEOUT}, "selftest")
    try:
        result = target.backend.run(Job.code(program("prelude", f"print({PRELUDE_OK!r})")),
                                    policy)
    except DetainError:
        return None
    if result.error is not None or result.timed_out or result.limit is not None \
            or PRELUDE_OK.encode() in result.stdout:
        return None
    said = result.stderr.decode("utf-8", "backslashreplace").strip().splitlines()
    return ("not comparable: the probes' first line (import os, sys) fails here, so none "
            f"could try its attack ({said[-1][:200] if said else f'exit {result.status}'})")


def _gate(target: Target, report: TargetReport) -> str | None:
    """Why the dangerous probes may not run on this backend, or None when they may."""
    if target.level < 1:
        return "not run: level 0 isolates nothing, a fork bomb would hit the host"
    if not report.clean:
        return "not run: this backend let a harmless probe out (or could not be judged)"
    return None
