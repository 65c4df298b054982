"""`detain selftest`: attack every backend on this host and judge, from the host, what got out.

The probes (one module per group) register themselves in `model.PROBES`; `run_battery`
runs them on the backends that can start here and returns one report per backend.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from ..backends import BACKENDS, load, probe
from ..errors import DetainError
from . import (
    probes_config,
    probes_fs,
    probes_hook,
    probes_net,
    probes_output,
    probes_priv,
    probes_proc,
    probes_py,
    probes_res,
    probes_trace,
    probes_tree,
)
from .bait import Session
from .model import GROUPS, PROBES, Probe, Verdict
from .runner import OnVerdict, Target, TargetReport, run_target

__all__ = ["GROUPS", "PROBES", "Probe", "Target", "TargetReport", "Verdict", "resolve",
           "run_battery"]
assert (probes_config and probes_fs and probes_hook and probes_net and probes_output
        and probes_priv and probes_proc and probes_py and probes_res and probes_trace
        and probes_tree)


def resolve(names: Iterable[str] | None = None) -> tuple[list[Target], dict[str, str]]:
    """Targets for `names` (default: every backend for this OS), and why others cannot run."""
    wanted = list(names or [n for n, e in BACKENDS.items() if e.system == platform.system()])
    targets, unavailable = [], {}
    for name in wanted:
        if name not in BACKENDS:
            raise DetainError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        found = probe(name)
        if found.available:
            targets.append(Target(name, BACKENDS[name].level, load(name)))
        else:
            unavailable[name] = found.reason
    return targets, unavailable


def run_battery(targets: list[Target], *, workers: int = 3,
                on_verdict: OnVerdict | None = None) -> list[TargetReport]:
    """Every probe on every target, one target after the other."""
    with Session() as session:
        return [run_target(t, session, workers=workers, on_verdict=on_verdict)
                for t in targets]
