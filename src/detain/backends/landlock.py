"""Level 2 without namespaces: Landlock + seccomp on top of the hardened interpreter.

For hosts where user namespaces are off (Ubuntu's AppArmor restriction, hardened kernels,
many containers) and nothing can be installed. The job is started like the `process`
backend's (isolated mode, empty environment, rlimits, own session, cgroups and a fresh uid
when detain is root), and right before exec the child enforces a Landlock ruleset
(read-only system and interpreter paths, read-write scratch only, no TCP bind/connect,
signals and abstract sockets scoped to the sandbox) and a seccomp filter that closes what
Landlock leaves open without a network or IPC namespace (socket() of every family,
datagram socketpairs, SysV/POSIX IPC, ptrace, mounts, ...). detain's own process is never
restricted. The network is always "none" here: an allow-list needs the proxy inside a
network namespace of the sandbox's own, so asking for one on this backend is an error.

Unprivileged, the job keeps your uid, so signal scoping (Landlock ABI 6) is what stops it
from signalling your other processes: below ABI 6 this backend requires root.
"""

from __future__ import annotations

import os

from ..errors import BackendUnavailable, ProtectionError
from ..guest import LAUNCHER
from ..host import landlock, privileges, seccomp
from ..host.interpreter import Interpreter
from . import Probe
from .base import Launch, RunContext
from .bwrap import ETC_FILES, ROOT_LINKS
from .process import ProcessBackend

# Not secrets, and read unguarded by tools the job may run (pip's distro reads them).
OS_RELEASE = ("os-release", "debian_version", "lsb-release")


class LandlockBackend(ProcessBackend):
    name = "landlock"
    hide_world_writable = False  # Landlock already denies every write outside scratch
    outside_trace = True  # the tracer is outside the job's Landlock domain (scoped)

    def probe(self) -> Probe:
        try:
            level = landlock.abi()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        if level < 1:
            return Probe(False, "this kernel has no Landlock (Linux 5.13+ with landlock in "
                                "the lsm= boot list is needed)")
        if level < landlock.SCOPE_ABI and not privileges.is_root():
            return Probe(False, f"Landlock ABI {level} cannot stop the job signalling your "
                                "processes (scoping needs ABI 6, Linux 6.12+); run detain as "
                                "root or use bwrap", f"ABI {level}")
        try:
            seccomp.filter_path(host_namespaces=True)
        except ProtectionError as exc:
            return Probe(False, str(exc), f"ABI {level}")
        return Probe(True, version=f"ABI {level}",
                     details=(("abi", str(level)), ("network", _network(level)),
                              ("scoped", "signals, abstract sockets"
                               if level >= landlock.SCOPE_ABI else "no (fresh uid instead)")))

    def launch(self, ctx: RunContext) -> Launch:
        launch = super().launch(ctx)
        read_exec, read_only = granted_paths(ctx.interpreter)
        confinement = landlock.build(read_exec=read_exec,
                                     read_only=[*read_only, str(ctx.job_dir)],
                                     writable=[str(ctx.scratch)])
        launch.release.append(confinement.close)
        ctx.setup.confine.append(confinement)
        ctx.extra["landlock"] = confinement.describe()
        return launch

    def host_assurance(self, ctx: RunContext, seen: dict) -> dict:
        described = ctx.extra.get("landlock", {})
        return {"landlock": described,
                "network_cut": _network(described.get("abi", 0)),
                # The host's: there is no network namespace (network_cut says what holds).
                "network_interfaces": None,
                "private_mount_namespace": bool(ctx.setup.stage),
                "read_only": described.get("read_exec", []) + described.get("read_only", []),
                "writable": described.get("writable", [])}


def granted_paths(interpreter: Interpreter) -> tuple[list[str], list[str]]:
    """What every run may read and execute, and only read, beside its job dir and scratch."""
    system = ["/usr"] + [f"/{name}" for name in ROOT_LINKS
                         if os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}")]
    return (system + list(interpreter.bind_dirs),
            [f"/etc/{name}" for name in ETC_FILES + OS_RELEASE] + [str(LAUNCHER.parent)])


def _network(level: int) -> str:
    """What holds on the host's network: no socket can exist to connect or listen with."""
    held = ("none: seccomp denies socket() for every family and type, so nothing can "
            "connect, send, listen or accept; only AF_UNIX stream/seqpacket socketpairs "
            "between the job's own processes")
    if level >= landlock.NET_ABI:
        held += "; Landlock also denies TCP bind/connect"
    return held


BACKEND = LandlockBackend()
