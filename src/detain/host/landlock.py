"""Landlock: the kernel's unprivileged access control, applied to the child before exec.

The ruleset is built in the parent (every path opened there, so a missing path is a clear
error before anything starts) and only *enforced* in the child, between fork and exec:
detain's own process is never restricted. Rules attach to inodes, so a directory the child
sees through a staging bind mount is covered by the rule made on its source.

Every filesystem right the kernel knows is handled (denied unless granted), TCP bind and
connect are handled with no port allowed (ABI >= 4), and the domain is scoped (ABI >= 6) so
the job can neither signal processes outside it nor reach abstract UNIX sockets. What
Landlock does not cover is closed by the `host_namespaces` seccomp filter, which lets the
job create no socket at all: Landlock's TCP rules miss MSG_FASTOPEN and listen(), so they
are only a second wall.

The bindings are landlockpy: dependency-free, and the one maintained library that covers
network rules and scoping.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from ..errors import BackendUnavailable, ProtectionError
from . import seccomp

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

NET_ABI, SCOPE_ABI, TRUNCATE_ABI = 4, 6, 3
# Files the launcher reads to report its confinement; granted by the child for its own pid.
# (/proc/self/net/* cannot be granted: procfs makes a new inode at every lookup there.)
PROC_SELF = ("/proc/self/status", "/proc/self/cgroup")
DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/full")
DEVICES_RO = ("/dev/urandom", "/dev/random")


def _lib():
    try:
        import landlockpy
    except ImportError as exc:
        raise BackendUnavailable(f"the landlock backend needs landlockpy ({exc}); "
                                 "pip install landlockpy") from None
    _preload_libc(landlockpy)
    return landlockpy


def _preload_libc(landlockpy) -> None:
    """Hand landlockpy the C library it would look up itself: its lookup,
    ctypes.util.find_library("c"), runs `ldconfig -p`, a process of its own on every
    cold run. The process's own symbols (CDLL(None)) hold the same syscall() and prctl()."""
    import ctypes

    syscalls = getattr(landlockpy, "_syscall", None)
    if syscalls is None or getattr(syscalls, "_libc", True) is not None:
        return  # another landlockpy, or loaded already: leave it to its own lookup
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    syscalls._libc = libc


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    try:
        return _lib().abi_version()
    except OSError:
        return 0


@dataclass
class Confinement:
    """One run's Landlock ruleset and seccomp program, ready to enforce in the child.

    Called in the child as a ChildSetup confine step: it grants the child's own /proc
    files, enforces the ruleset, then loads the seccomp filter. On failure it writes one
    line to stderr and exits 126, so the host reports that the sandbox failed to start.
    """

    abi: int
    ruleset: object
    program: seccomp.Program
    granted: dict[str, list[str]] = field(default_factory=dict)

    def __call__(self) -> None:
        lib = _lib()
        try:
            for path in PROC_SELF:
                if os.path.exists(path):
                    self.ruleset.allow_path(path, lib.AccessFS.READ_FILE)
            self.ruleset.restrict(no_new_privs=True)
            self.program.install()
        except OSError as exc:
            os.write(2, f"detain: could not confine the sandbox: {exc}\n".encode())
            os._exit(126)

    def close(self) -> None:
        self.ruleset.close()

    def describe(self) -> dict:
        ruleset = self.ruleset
        return {"abi": self.abi, "enforced_before_exec": True,
                "handled_fs": names(ruleset.handled_fs),
                "handled_net": names(ruleset.handled_net) or None,
                "scoped": names(ruleset.scoped) or None, **self.granted}


def names(flags) -> list[str]:
    return [flag.name.lower() for flag in type(flags) if flag.value and flag in flags
            and flag.name]


@dataclass
class Plan:
    """The rights a ruleset handles and grants, before any path is opened: `build` makes a
    ruleset of it here, a zygote's run (guest/zygote.py) a fresh one of its own."""

    abi: int
    handled_fs: Any
    handled_net: Any
    scoped: Any
    file_rights: Any  # what a rule on a file (not a dir) may grant
    rules: list[tuple[str, str, Any]]  # (kind, path, rights)
    writable: Any  # the rights of a writable dir
    read: Any  # the rights of a read-only dir


def plan(read_exec: list[str], read_only: list[str], writable: list[str]) -> Plan:
    """What a ruleset granting exactly these paths handles and grants."""
    lib = _lib()
    level = abi()
    if level < 1:
        raise BackendUnavailable("this kernel has no Landlock (Linux 5.13+ with landlock in "
                                 "the lsm= boot list is needed)")
    access = lib.AccessFS
    handled = lib.fs_for_abi(level)
    net = lib.net_for_abi(level) if level >= NET_ABI else lib.AccessNet(0)
    scope = lib.scope_for_abi(level) if level >= SCOPE_ABI else lib.Scope(0)
    read = access.READ_FILE | access.READ_DIR
    write = handled & ~(access.EXECUTE | access.MAKE_CHAR | access.MAKE_BLOCK)
    file_rights = access.READ_FILE | access.WRITE_FILE | access.EXECUTE
    if level >= TRUNCATE_ABI:
        file_rights |= access.TRUNCATE
    rules = [("read_exec", p, read | access.EXECUTE) for p in read_exec]
    rules += [("read_only", p, read) for p in read_only]
    rules += [("writable", p, write | read) for p in writable]
    rules += [("read_only", p, access.READ_FILE | access.WRITE_FILE) for p in DEVICES_RW]
    rules += [("read_only", p, access.READ_FILE) for p in DEVICES_RO]
    # Listing only, so code that walks /proc gets EACCES on each file rather than on the
    # walk; there is no pid namespace to hide the host's pids anyway.
    rules.append(("list_only", "/proc", access.READ_DIR))
    return Plan(level, handled, net, scope, file_rights, rules, write | read, read)


def build(read_exec: list[str], read_only: list[str], writable: list[str]) -> Confinement:
    """A ruleset granting exactly these paths (missing optional paths are skipped)."""
    lib = _lib()
    rights = plan(read_exec, read_only, writable)
    ruleset = lib.Ruleset(handled_fs=rights.handled_fs, handled_net=rights.handled_net,
                          scoped=rights.scoped, best_effort=False)
    granted: dict[str, list[str]] = {"read_exec": [], "read_only": [], "writable": [],
                                     "list_only": []}
    try:
        for kind, path, allowed in rights.rules:
            if not os.path.isdir(path):
                if not os.path.exists(path):
                    continue
                allowed &= rights.file_rights
            ruleset.allow_path(path, allowed)
            granted[kind].append(path)
        filter_path = seccomp.filter_path(host_namespaces=True)
        program = seccomp.Program(filter_path)
    except OSError as exc:
        ruleset.close()
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            raise BackendUnavailable(f"Landlock is not usable here: {exc}") from None
        raise ProtectionError(f"could not build the Landlock ruleset: {exc}") from None
    except BaseException:
        ruleset.close()
        raise
    return Confinement(rights.abi, ruleset, program, granted)
