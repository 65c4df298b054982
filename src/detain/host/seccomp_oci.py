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
from .tools import cache_dir


def profile() -> dict:
    deny = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    masked = "SCMP_CMP_MASKED_EQ"
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": list(DENIED), **deny},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            {"names": ["clone"], **deny, "args": [
                {"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": masked}]},
            *({"names": ["ioctl"], **deny, "args": [
                {"index": 1, "value": 0xFFFFFFFF, "valueTwo": request, "op": masked}]}
              for request in (TIOCSTI, TIOCLINUX)),
        ],
    }


def profile_path() -> Path:
    """The profile as a file (engines take a path), written once per rule set."""
    text = json.dumps(profile(), sort_keys=True)
    path = cache_dir() / f"seccomp-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path
