"""A seccomp filter denying kernel interfaces a Python job never needs.

Compiled once with libseccomp (through pyseccomp) and cached as raw BPF, so a run only
opens a file: the per-run path imports nothing. Denied calls fail with EPERM (ENOSYS for
clone3, so libc falls back to clone, whose namespace flags the filter can inspect).
"""

from __future__ import annotations

import errno
import hashlib
import os
import platform
from pathlib import Path

from ..errors import ProtectionError

CLONE_NEWUSER = 0x10000000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

DENIED = (
    # debugging and reading other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # the kernel itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    "lookup_dcookie", "uselib", "ustat", "sysfs", "vhangup", "nfsservctl",
    # large attack surfaces
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "open_by_handle_at", "name_to_handle_at", "personality",
)


def _rules_digest() -> str:
    text = repr((DENIED, CLONE_NEWUSER, TIOCSTI, TIOCLINUX, platform.machine()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "detain"


def filter_path() -> Path:
    """Path of the compiled BPF program, building it on first use."""
    path = cache_dir() / f"seccomp-{_rules_digest()}.bpf"
    if path.is_file() and path.stat().st_size > 0:
        return path
    try:
        import pyseccomp as seccomp
    except ImportError as exc:
        raise ProtectionError(f"the seccomp filter needs pyseccomp and libseccomp ({exc}); "
                              "install libseccomp2 (apt) or reinstall detain") from None
    deny = seccomp.ERRNO(errno.EPERM)
    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        try:
            filt.add_rule(deny, name)
        except (ValueError, RuntimeError, OSError):
            continue  # not a syscall on this architecture
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    filt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    for request in (TIOCSTI, TIOCLINUX):
        filt.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        filt.export_bpf(handle)
    os.replace(tmp, path)
    return path
