"""Privilege probes: uid 0, setuid, capabilities, namespaces, kernel interfaces.

Each is judged from the host's /proc while the job waits: the host uid of every job
process, tracers, namespaces, and which kernel objects (bpf maps, perf events, io_uring
instances, userfaultfds) its file descriptors point to.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat

from . import hostview
from .bait import KEYRING, Bait
from .model import Attack, NotApplicable, Outcome, probe, program

SYSCALLS = {  # x86_64, aarch64
    "bpf": (321, 280), "userfaultfd": (323, 282), "perf_event_open": (298, 241),
    "io_uring_setup": (425, 425), "add_key": (248, 217), "ptrace": (101, 117),
}
SETUID_BINARIES = ("su", "newgrp")  # both wait on stdin when they start, none changes files


def _syscall(name: str) -> int:
    arches = {"x86_64": 0, "aarch64": 1}
    if platform.machine() not in arches:
        raise NotApplicable(f"no syscall numbers known for {platform.machine()}")
    return SYSCALLS[name][arches[platform.machine()]]


def _waiting(bait: Bait, body: str, check, observe=None, **consts) -> Attack:
    """A job that does `body`, then waits while the host looks (by default, at its
    processes)."""
    return Attack(program(bait.tag, body + "\nready()\n", wait=True, **consts), check,
                  observe=observe or hostview.watcher(bait.tag))


def _root_uids(out: Outcome) -> str | None:
    root = [p for p in hostview.seen(out.observed) if 0 in p.uids]
    if root:
        return f"job process {root[0].pid} ({root[0].comm}) ran as host uid 0"
    return None


@probe("privileges", "uid-0", "become uid 0 (setuid/setresuid), judged by the host uid of "
       "every job process")
def uid_0(bait: Bait) -> Attack:
    body = """
for call in (lambda: os.setresuid(0, 0, 0), lambda: os.setuid(0), lambda: os.seteuid(0)):
    try:
        call()
    except OSError as exc:
        print(type(exc).__name__)
"""
    return _waiting(bait, body, _root_uids)


@probe("privileges", "setuid-binary", "run setuid-root programs (su, newgrp) and hold them "
       "open")
def setuid_binary(bait: Bait) -> Attack:
    found = [shutil.which(name) for name in SETUID_BINARIES]
    found = [path for path in found if path and os.stat(path).st_mode & stat.S_ISUID]
    if not found:
        raise NotApplicable("this host has no setuid-root su or newgrp to try")
    body = """
import subprocess, time
held = []
for path in BINARIES:
    try:
        held.append(subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL))
    except OSError as exc:
        print(path, type(exc).__name__)
time.sleep(0.5)
"""
    return _waiting(bait, body, _root_uids, BINARIES=found)


@probe("privileges", "capabilities", "use root's capabilities (DAC override, fowner, chown) "
       "on a root-owned file shown writable-mounted inside")
def capabilities(bait: Bait) -> Attack:
    if os.geteuid() != 0:
        raise NotApplicable("needs a file the job must not own; run selftest as root")
    locked = bait.subdir("locked")
    target = locked / "file"
    target.write_text(bait.secret)
    os.chmod(target, 0o600)
    before = (sorted(os.listdir(locked)), target.stat().st_mode, target.read_text())
    body = """
steps = [lambda: open(TARGET, 'a').write('escaped'), lambda: os.chmod(TARGET, 0o666),
         lambda: os.chown(TARGET, os.getuid(), os.getgid()),
         lambda: open(os.path.join(os.path.dirname(TARGET), 'new'), 'w').close(),
         lambda: os.rename(TARGET, TARGET + '.moved')]
for step in steps:
    try:
        step()
    except OSError as exc:
        print(type(exc).__name__)
"""

    def check(_out: Outcome) -> str | None:
        try:
            after = (sorted(os.listdir(locked)), target.stat().st_mode, target.read_text())
        except OSError as exc:
            return f"the root-owned file was moved away ({exc.strerror})"
        return None if after == before else "a root-owned host file was changed"
    return Attack(program(bait.tag, body, TARGET=str(target)), check,
                  mounts=(f"{locked}:{locked}:rw",))


def _namespace_probe(name: str, flag: int, kind: str, what: str) -> None:
    @probe("privileges", name, f"create a new {what} namespace (unshare) in a child")
    def plan(bait: Bait) -> Attack:
        body = """
import ctypes
read_end, write_end = os.pipe()
if os.fork() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    print('unshare', libc.unshare(FLAG), ctypes.get_errno(), flush=True)
    os.write(write_end, b'x')
    import time
    time.sleep(60)
    os._exit(0)
os.read(read_end, 1)
"""

        def observe() -> list[tuple[hostview.Proc, str | None]]:
            return [(p, hostview.namespace(p.pid, kind)) for p in hostview.job_processes(bait.tag)
                    if p.alive and p.comm.startswith("python")]

        def check(out: Outcome) -> str | None:
            spaces = {space for _, space in hostview.seen(out.observed) if space}
            return f"the job's processes span {len(spaces)} {kind} namespaces" \
                if len(spaces) > 1 else None
        return _waiting(bait, body, check, observe=observe, FLAG=flag)


_namespace_probe("user-namespace", 0x10000000, "user", "user")
_namespace_probe("mount-namespace", 0x00020000, "mnt", "mount")


@probe("privileges", "ptrace", "ptrace a child (PTRACE_TRACEME), judged by the host's "
       "TracerPid")
def ptrace(bait: Bait) -> Attack:
    body = """
import ctypes, signal
read_end, write_end = os.pipe()
if os.fork() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    print('traceme', libc.syscall(PTRACE, 0, 0, 0, 0), flush=True)
    os.write(write_end, b'x')
    import time
    time.sleep(60)
    os._exit(0)
os.read(read_end, 1)
"""

    def check(out: Outcome) -> str | None:
        traced = [p for p in hostview.seen(out.observed) if p.tracer]
        return f"job process {traced[0].pid} is being ptraced" if traced else None
    return _waiting(bait, body, check, PTRACE=_syscall("ptrace"))


def _fd_probe(name: str, syscall: str, inode: str, call: str, what: str) -> None:
    @probe("privileges", name, f"{what}, judged by the kernel objects its fds hold")
    def plan(bait: Bait) -> Attack:
        body = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n" + call + \
               "\nprint('result', fd, ctypes.get_errno())\n"
        return _waiting(bait, body, lambda out: _fd_check(out, inode, syscall),
                        observe=lambda: _with_fds(bait.tag), NUMBER=_syscall(syscall))


def _with_fds(tag: str) -> list[tuple[hostview.Proc, list[str]]]:
    return [(p, hostview.fd_targets(p.pid)) for p in hostview.job_processes(tag)]


def _fd_check(out: Outcome, inode: str, syscall: str) -> str | None:
    for _proc, targets in hostview.seen(out.observed):
        if any(inode in target for target in targets):
            return f"the job holds a {inode} object ({syscall} was allowed)"
    return None


_fd_probe("bpf", "bpf", "bpf-map", """
attr = (ctypes.c_uint32 * 30)(2, 4, 4, 1)
fd = libc.syscall(NUMBER, 0, attr, ctypes.sizeof(attr))
""", "create a BPF map")
_fd_probe("userfaultfd", "userfaultfd", "userfaultfd", """
fd = libc.syscall(NUMBER, 0o2000000)
if fd < 0:
    fd = libc.syscall(NUMBER, 0o2000000 | 1)
""", "open a userfaultfd")
_fd_probe("perf-event", "perf_event_open", "perf_event", """
attr = (ctypes.c_uint64 * 16)()
attr[0] = 1 | (128 << 32)
attr[5] = 1 | 32 | 64
fd = libc.syscall(NUMBER, attr, 0, -1, -1, 0)
""", "open a perf event on itself")
_fd_probe("io-uring", "io_uring_setup", "io_uring", """
params = (ctypes.c_uint32 * 30)()
fd = libc.syscall(NUMBER, 4, params)
""", "set up an io_uring")


@probe("privileges", "keyctl", "add a key to the kernel keyring, judged by the host's "
       "per-uid key count")
def keyctl(bait: Bait) -> Attack:
    bait.exclusive(KEYRING)
    before = hostview.key_counts()
    body = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print('add_key', libc.syscall(NUMBER, b'user', b'detain-selftest', b'x', 1, -2))
"""

    def observe() -> list[tuple[hostview.Proc, int]]:
        counts = hostview.key_counts()
        return [(p, counts.get(p.uids[0], 0)) for p in hostview.job_processes(bait.tag)
                if p.uids]

    def check(out: Outcome) -> str | None:
        grown = [p for p, count in hostview.seen(out.observed)
                 if count > before.get(p.uids[0], 0)]
        return f"the job's uid {grown[0].uids[0]} now owns kernel keys" if grown else None
    return _waiting(bait, body, check, observe=observe, NUMBER=_syscall("add_key"))

