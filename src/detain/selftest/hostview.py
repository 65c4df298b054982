"""What the host can see of a running job, read from the host's own /proc.

A job's processes are found by the tag in their command line (the guest launcher gets
the probe's source as an argument), keeping only interpreters and `sleep`s so that the
sandbox machinery (bwrap, a container runtime) that also carries the source in its argv
is not mistaken for the job, plus every descendant of those. Backends whose guest runs
under its own kernel show nothing here; checks that need this view say n/a there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .model import NotApplicable

JOB_COMMANDS = ("python", "sleep")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    cmdline: bytes
    uids: tuple[int, ...]
    tracer: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def _proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read(1 << 20)
        with open(f"/proc/{pid}/status", "rb") as handle:
            status = handle.read(8192).decode("utf-8", "replace")
    except OSError:
        return None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    try:
        return Proc(pid, int(fields.get("PPid", "0")), fields.get("State", "?")[:1],
                    fields.get("Name", ""), cmdline.replace(b"\0", b" "),
                    tuple(int(u) for u in fields.get("Uid", "").split()),
                    int(fields.get("TracerPid", "0")))
    except ValueError:
        return None


def all_processes() -> list[Proc]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            proc = _proc(int(entry))
            if proc is not None:
                found.append(proc)
    return found


def job_processes(tag: str) -> list[Proc]:
    """The job's processes (zombies included), as the host sees them."""
    procs = all_processes()
    needle = tag.encode()
    roots = {p.pid for p in procs if needle in p.cmdline and p.comm.startswith(JOB_COMMANDS)}
    members = set(roots)
    grew = True
    while grew:
        grew = False
        for proc in procs:
            if proc.ppid in members and proc.pid not in members:
                members.add(proc.pid)
                grew = True
    return [p for p in procs if p.pid in members]


def fd_targets(pid: int) -> list[str]:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    targets = []
    for name in names:
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    return targets


def namespace(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def tree_bytes(path: Path, limit: int = 20000) -> int:
    """Bytes allocated under `path`, never following a link (it is the job's tree)."""
    total, seen = 0, 0
    stack = [str(path)]
    while stack and seen < limit:
        current = stack.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        seen += 1
        total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            try:
                stack += [os.path.join(current, n) for n in os.listdir(current)]
            except OSError:
                continue
    return total


def key_counts() -> dict[int, int]:
    """Keys the kernel holds per uid (/proc/key-users), whoever can read them."""
    counts: dict[int, int] = {}
    try:
        text = Path("/proc/key-users").read_text()
    except OSError:
        return counts
    for line in text.splitlines():
        owner, _, rest = line.partition(":")
        try:
            counts[int(owner)] = int(rest.split()[1].split("/")[0])
        except (ValueError, IndexError):
            continue
    return counts

INVISIBLE = "the host cannot see this backend's processes (they run under another kernel)"


def watcher(tag: str) -> Callable[[], list[Proc]]:
    """An Attack.observe that snapshots the job's processes while the job waits."""
    return lambda: job_processes(tag)


def seen(observed: list[Proc] | None) -> list[Proc]:
    """The processes a watcher saw; none at all means the host could not look (n/a).

    A job that never reached READY (refused earlier, crashed) did nothing to judge: [].
    """
    if observed is None:
        return []
    if not observed:
        raise NotApplicable(INVISIBLE)
    return observed
