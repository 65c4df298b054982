"""detain's seccomp rules as an OCI / Docker JSON profile, for sandboxes a runtime starts.

Container engines and runsc load a filter from a profile, not from BPF, and their default
profiles allow calls detain denies (ptrace, io_uring). The rules are the ones in
seccomp.py, written out in the profile format; the file is cached by their digest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

from .seccomp import CLONE_NEWUSER, DENIED, TIOCLINUX, TIOCSTI
from .tools import trusted_cache_dir


def profile(trace: bool = False) -> dict:
    """The rules; with `trace`, also the outside tracer's stops (host/trace_hook.py)."""
    deny = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    masked = "SCMP_CMP_MASKED_EQ"
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        # Traced, the native ABI only: a syscall of another (i386's int 0x80, x32) would
        # run without a stop, so the runtime's default for a foreign one, a kill, stands.
        "architectures": ["SCMP_ARCH_X86_64"] if trace else
        ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            *(_trace_rules() if trace else ()),
            {"names": list(DENIED), **deny},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            {"names": ["clone"], **deny, "args": [
                {"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": masked}]},
            *({"names": ["ioctl"], **deny, "args": [
                {"index": 1, "value": 0xFFFFFFFF, "valueTwo": request, "op": masked}]}
              for request in (TIOCSTI, TIOCLINUX)),
        ],
    }


def _trace_rules() -> list[dict]:
    """SCMP_ACT_TRACE for the syscalls the tracer reports, as host/tracer.py's own filter
    does (an open of a directory makes no stop). With no tracer attached the kernel fails
    them with ENOSYS: an untraced job cannot run."""
    from . import tracer  # only traced runs need libseccomp's syscall table

    rules: list[dict] = []
    for name in tracer.syscall_numbers():
        rule: dict = {"names": [name], "action": "SCMP_ACT_TRACE"}
        if name in tracer.FLAGS_ARG:
            rule["args"] = [{"index": tracer.FLAGS_ARG[name], "value": tracer.O_DIRECTORY,
                             "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
        rules.append(rule)
    return rules


def profile_path(trace: bool = False) -> Path:
    """The profile as a file (engines take a path), written once per rule set."""
    text = json.dumps(profile(trace), sort_keys=True)
    path = trusted_cache_dir() / f"seccomp-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path
