"""A seccomp filter denying kernel interfaces a Python job never needs.

Compiled once with libseccomp (through pyseccomp) and cached as raw BPF, so a run only
opens a file: the per-run path imports nothing. Denied calls fail with EPERM (ENOSYS for
clone3, so libc falls back to clone, whose namespace flags the filter can inspect).

A sandbox without namespaces of its own (`landlock`) shares the host's network and IPC
namespaces, so its filter (`host_namespaces=True`) also closes what Landlock does not
cover: every socket (see `_restrict_sockets`), SysV IPC and POSIX message queues, and the
path-based chown and xattr writes that Landlock does not check.

The cache file is named by a digest of this module's own source, so any change to a rule
here builds a new filter instead of reusing a stale one.
"""

from __future__ import annotations

import errno
import functools
import os
from importlib.util import source_hash
from pathlib import Path

from ..errors import ProtectionError
from .tools import trusted_cache_dir

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


# Shared with the host when there is no IPC namespace; Landlock does not mediate them.
DENIED_HOST_NAMESPACES = (
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "chown", "lchown", "fchownat", "setxattr", "lsetxattr", "removexattr", "lremovexattr",
    "setxattrat", "removexattrat",
)
AF_UNIX = 1
SOCK_TYPE_MASK = 0xF
# The socketpair types whose sends ignore a destination address: a datagram socketpair
# could sendto() any host UNIX datagram socket by path (/dev/log, notify sockets), a path
# lookup Landlock does not check.
SOCKETPAIR_TYPES = (1, 5)  # SOCK_STREAM, SOCK_SEQPACKET


@functools.cache
def _rules_digest(host_namespaces: bool) -> str:
    """The cache file's name: a digest of the rules (this source, the machine), SipHash as
    for hash-based .pyc files; hashlib would load OpenSSL on every run."""
    text = repr((host_namespaces, os.uname().machine)).encode() + Path(__file__).read_bytes()
    return source_hash(text).hex()


def filter_path(host_namespaces: bool = False) -> Path:
    """Path of the compiled BPF program, building it on first use.

    `host_namespaces`: the sandbox has no network/IPC namespace of its own, so sockets and
    host IPC are denied too.
    """
    path = trusted_cache_dir() / f"seccomp-{_rules_digest(host_namespaces)}.bpf"
    if path.is_file() and path.stat().st_size > 0:
        return path
    try:
        import pyseccomp as seccomp
    except ImportError as exc:
        raise ProtectionError(f"the seccomp filter needs pyseccomp and libseccomp ({exc}); "
                              "install libseccomp2 (apt) or reinstall detain") from None
    deny = seccomp.ERRNO(errno.EPERM)
    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED + (DENIED_HOST_NAMESPACES if host_namespaces else ()):
        try:
            filt.add_rule(deny, name)
        except (ValueError, RuntimeError, OSError):
            continue  # not a syscall on this architecture (or unknown to this libseccomp)
    if host_namespaces:
        _restrict_sockets(seccomp, filt, deny)
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    filt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    for request in (TIOCSTI, TIOCLINUX):
        filt.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    export(filt, path)
    return path


def export(filt, path: Path) -> None:
    """Write a libseccomp filter's BPF to the cache file `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        filt.export_bpf(handle)
    os.replace(tmp, path)


def _restrict_sockets(seccomp, filt, deny) -> None:
    """No socket() at all; socketpair() only for connected AF_UNIX stream/seqpacket pairs.

    Landlock governs only TCP connect() and bind(), and the kernel has other ways to open
    or accept a TCP connection (MSG_FASTOPEN on sendto/sendmsg/sendmmsg, listen() on an
    unbound socket autobinding a port, MPTCP), so the only sound rule without a network
    namespace is that the job holds no socket that could reach anything: none is created,
    and none is inherited (stdio and detain's channels are pipes). What is left, a
    socketpair whose sends ignore any address, reaches only the job's own processes.

    Arguments are compared as 64-bit values while the kernel reads 32-bit ints, so the
    rules deny rather than allow, leaving nothing stray upper bits could disguise: any
    family but exactly AF_UNIX is denied (`GT` catches set upper bits, the masked test
    a zero low half), and any type whose low nibble (the kernel's SOCK_TYPE_MASK) is not
    listed.
    """
    arg = seccomp.Arg
    filt.add_rule(deny, "socket")
    # A socketpair needs no name: binding one would take an abstract name in the host's
    # namespace, denying it to host services for as long as the job runs.
    for name in ("bind", "listen"):
        filt.add_rule(deny, name)
    filt.add_rule(deny, "socketpair", arg(0, seccomp.MASKED_EQ, 0xFFFFFFFF, 0))
    filt.add_rule(deny, "socketpair", arg(0, seccomp.GT, AF_UNIX))
    for kind in range(SOCK_TYPE_MASK + 1):
        if kind not in SOCKETPAIR_TYPES:
            filt.add_rule(deny, "socketpair", arg(1, seccomp.MASKED_EQ, SOCK_TYPE_MASK, kind))


class Program:
    """A compiled filter held in memory, to be installed by a child before it execs.

    Built in the parent (file read, ctypes structures), so the child's step between
    fork and exec is a single prctl.
    """

    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2

    def __init__(self, path: Path) -> None:
        import ctypes  # here: bwrap only hands the file over, and needs no ctypes for it

        class _Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        data = path.read_bytes()
        if not data or len(data) % 8:
            raise ProtectionError(f"{path}: not a compiled seccomp filter; delete it")
        self._buffer = ctypes.create_string_buffer(data, len(data))
        self._prog = _Fprog(len(data) // 8, ctypes.addressof(self._buffer))
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._ctypes = ctypes

    def install(self) -> None:
        """Load the filter into the calling process (needs no_new_privs or CAP_SYS_ADMIN)."""
        if self._libc.prctl(self.PR_SET_SECCOMP, self.SECCOMP_MODE_FILTER,
                            self._ctypes.byref(self._prog), 0, 0) != 0:
            err = self._ctypes.get_errno()
            raise OSError(err, f"seccomp: {os.strerror(err)}")
