"""The vocabulary of the battery: a probe, the attack it plans, and the host's verdict.

A probe is a function that prepares host-side bait (files, listeners, victim processes)
and returns an `Attack`: the program to run inside the sandbox plus a `check` that looks
at the host afterwards. The program's own output is never believed; checks look for
secrets the program could only know by getting out, or for effects on the host.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..result import Result

GROUPS = {
    "filesystem": "read host secrets, write outside scratch, link and copy-out tricks, "
                  "device nodes, /proc and /sys leaks",
    "network": "reach host listeners over TCP/UDP/IPv6 loopback, UNIX sockets (path and "
               "abstract), raw and packet sockets, netlink, TCP fast open, listen() "
               "autobind, MPTCP/SCTP, x32 syscalls, the allow-list proxy",
    "processes": "signal or ptrace host processes, kill(-1), outlive the run, fork bomb",
    "resources": "memory, CPU, disk, open files, output floods, huge lines, zombie piles",
    "privileges": "uid 0, setuid binaries, capabilities, new namespaces, kernel "
                  "interfaces the seccomp filter should deny",
    "python": "PYTHON* variables, user site and .pth files, script-dir shadowing, "
              "tampering with the launcher's event channel, a project's own config",
}
READY = "DETAIN-SELFTEST-READY"
WAIT_SECONDS = 2.0  # how long a job waits for the host to look, when the host cannot say

CONTAINED, ESCAPED, NOT_APPLICABLE, ERROR = "contained", "ESCAPED", "n/a", "error"


class NotApplicable(Exception):
    """This probe cannot be judged on this host or backend; the message says why."""


@dataclass
class Verdict:
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Outcome:
    """What the host saw of one run: the Result, what `observe` found mid-run, timings."""

    result: Result | None
    error: str | None
    wall: float
    observed: Any = None

    @property
    def output(self) -> bytes:
        if self.result is None:
            return b""
        return self.result.stdout + self.result.stderr


Check = Callable[[Outcome], "str | None"]


@dataclass
class Attack:
    """One planned run. `check` returns what got out, or None when nothing did.

    `observe` runs on the host while the job waits after printing READY (it blocks on
    stdin until the host has looked), so live state — processes, fds, namespaces, files
    in the sandbox's tmpfs — is judged from outside. `mounts` are host dirs shown at the
    same path inside, on backends that can mount. `project` is a host dir whose
    pyproject.toml the run reads as `--project-config` would (untrusted, tighten-only).
    """

    code: str
    check: Check
    settings: dict[str, Any] = field(default_factory=dict)
    observe: Callable[[], Any] | None = None
    script: str | None = None
    mounts: tuple[str, ...] = ()
    project: str | None = None
    follow_up: Attack | None = None


@dataclass(frozen=True)
class Probe:
    group: str
    name: str
    tries: str
    plan: Callable[..., Attack]
    dangerous: bool = False

    @property
    def id(self) -> str:
        return f"{self.group}.{self.name}"


PROBES: list[Probe] = []


def probe(group: str, name: str, tries: str, *, dangerous: bool = False):
    """Register a probe; `dangerous` ones could hurt an unsandboxed host."""
    assert group in GROUPS, group

    def register(plan: Callable[..., Attack]) -> Callable[..., Attack]:
        PROBES.append(Probe(group, name, tries, plan, dangerous))
        return plan
    return register


def program(tag: str, body: str, *, wait: bool = False, **consts: Any) -> str:
    """The probe's source: its tag (how the host finds its processes), constants, body.

    With `wait`, `ready()` prints the READY marker and waits until the host has looked:
    the host sends SIGUSR1 when done (blocked from the start, so it cannot be missed), or,
    where the host cannot see the job's processes (another kernel), WAIT_SECONDS pass.
    Not stdin: some backends read all of stdin before the job starts.
    """
    lines = [f"# detain-selftest {tag}", "import os, sys"]
    lines += [f"{name} = {value!r}" for name, value in consts.items()]
    if wait:
        lines.append("import signal as _signal\n"
                     "_signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGUSR1})\n"
                     f"def ready():\n    print({READY!r}, flush=True)\n"
                     f"    _signal.sigtimedwait({{_signal.SIGUSR1}}, {WAIT_SECONDS})")
    return "\n".join(lines) + "\n" + textwrap.dedent(body)


def leaked(secret: str | bytes, outcome: Outcome, what: str) -> str | None:
    """The shared check: a secret that only exists outside must not come back."""
    needle = secret.encode() if isinstance(secret, str) else secret
    if needle and needle in outcome.output:
        return f"{what} came back in the output"
    return None
