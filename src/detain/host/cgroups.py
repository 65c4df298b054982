"""Memory and process limits through cgroups (v2, or v1 as on this kind of host).

Limits are written, then read back: what the Result reports is what the kernel accepted.
The kernel's own counters (OOM kills, pids.max hits, peak memory) are observations the
job cannot forge, unlike anything said from inside the sandbox.

As root, detain makes its own groups. As an ordinary user, only a cgroup v2 subtree the
system delegated to the user (a systemd user session's) can hold a run's memory and
processes as totals: detain's own group, when it is writable and has the memory and pids
controllers. cgroup v2 lets no group with processes enable controllers for children, so the
processes in it are first moved to a leaf of their own (`detain-host`), beside the runs'.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .rundir import RunDir, cleaner

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "freezer", "cpuacct")
# A zygote's run (host/zygote.py) joins v1 groups itself, each join an RCU grace period:
# only those of its limits. Its pid 1 or reaper ends it all (no freezer needed), and its
# CPU time is the rusage detain reaps.
FORKED_V1 = ("memory", "pids")
DELEGATED_CONTROLLERS = ("memory", "pids")
HOST_LEAF = "detain-host"


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def version() -> int | None:
    """2 for a unified hierarchy, 1 for v1 memory+pids, None when neither is writable."""
    if (ROOT / "cgroup.controllers").exists():
        return 2 if os.access(ROOT, os.W_OK) else None
    if all(os.access(ROOT / c, os.W_OK) for c in V1_CONTROLLERS):
        return 1
    return None


def unified_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted: the root, or `unified` on a hybrid host."""
    for path in (ROOT, ROOT / "unified"):
        if (path / "cgroup.controllers").exists():
            return path
    return None


def delegation() -> tuple[Path | None, str]:
    """This process's own cgroup v2 group when it is delegated to this user, or None and
    why not (in words that fit after "because")."""
    mount = unified_mount()
    if mount is None:
        return None, "this host has no cgroup v2 hierarchy"
    own = next((line[3:].strip() for line in _read(Path("/proc/self/cgroup")).splitlines()
                if line.startswith("0::")), None)
    if own is None:
        return None, "detain is in no cgroup v2 group"
    base = mount / own.lstrip("/")
    if base.name == HOST_LEAF:  # moved there by an earlier run of this process
        base = base.parent
    available = _read(base / "cgroup.controllers").split()
    missing = [c for c in DELEGATED_CONTROLLERS if c not in available]
    if missing:
        return None, f"its cgroup v2 group {base} has no {' or '.join(missing)} controller"
    if not all(os.access(p, os.W_OK) for p in (base, base / "cgroup.procs",
                                                base / "cgroup.subtree_control")):
        return None, f"its cgroup v2 group {base} is not delegated to this user"
    return base, ""


@dataclass
class Cgroup:
    version: int
    dirs: dict[str, Path]
    applied: dict[str, int] = field(default_factory=dict)
    delegated: bool = False  # in the user's delegated subtree, not one detain made as root

    @classmethod
    def create(cls, run: RunDir, memory: int, pids: int,
               v1: tuple[str, ...] = V1_CONTROLLERS) -> Cgroup | None:
        """A fresh cgroup for this run, or None when this host gives us none to write.
        `v1`: the v1 controllers it gets a group in (a zygote's run: only its limits')."""
        ver = version()
        if ver is None:
            return None
        name = run.path.name
        if ver == 2:
            parent = ROOT / "detain"
            if not parent.exists():
                parent.mkdir(exist_ok=True)
            for holder in (ROOT, parent):
                enabled = _read(holder / "cgroup.subtree_control").split()
                missing = [c for c in ("memory", "pids") if c not in enabled]
                if missing:
                    _write(holder / "cgroup.subtree_control", " ".join("+" + c for c in missing))
            dirs = {"unified": parent / name}
        else:
            dirs = {c: ROOT / c / "detain" / name for c in v1}
        for path in dirs.values():
            run.record("cgroup", str(path))
            path.mkdir(parents=True)
        group = cls(ver, dirs)
        group._limit(memory, pids)
        return group

    @classmethod
    def in_delegation(cls, run: RunDir, memory: int, pids: int) -> Cgroup | None:
        """A fresh group for this run inside the user's delegated subtree, or None."""
        base, _ = delegation()
        if base is None:
            return None
        enabled = _read(base / "cgroup.subtree_control").split()
        if not all(c in enabled for c in DELEGATED_CONTROLLERS):
            leaf = base / HOST_LEAF
            leaf.mkdir(exist_ok=True)
            for pid in _read(base / "cgroup.procs").split():
                try:
                    _write(leaf / "cgroup.procs", pid)
                except ProcessLookupError:
                    continue
            _write(base / "cgroup.subtree_control",
                   " ".join("+" + c for c in DELEGATED_CONTROLLERS))
        path = base / run.path.name
        run.record("cgroup", str(path))
        path.mkdir()
        group = cls(2, {"unified": path}, delegated=True)
        group._limit(memory, pids)
        return group

    def _file(self, controller: str, v1: str, v2: str) -> Path:
        if self.version == 2:
            return self.dirs["unified"] / v2
        return self.dirs[controller] / v1

    def _limit(self, memory: int, pids: int) -> None:
        mem_file = self._file("memory", "memory.limit_in_bytes", "memory.max")
        pids_file = self._file("pids", "pids.max", "pids.max")
        _write(mem_file, str(memory))
        _write(pids_file, str(pids))
        if self.version == 2 and (self.dirs["unified"] / "memory.swap.max").exists():
            _write(self.dirs["unified"] / "memory.swap.max", "0")
        self.applied = {"memory": int(_read(mem_file).strip() or 0),
                        "pids": int(_read(pids_file).strip() or 0)}

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    def peak_memory(self) -> int:
        text = _read(self._file("memory", "memory.max_usage_in_bytes", "memory.peak")).strip()
        return int(text) if text.isdigit() else 0

    def oom_kills(self) -> int:
        return _counter(_read(self._file("memory", "memory.oom_control", "memory.events")),
                        "oom_kill")

    def cpu_seconds(self) -> float:
        if self.version == 2:
            return _counter(_read(self.dirs["unified"] / "cpu.stat"), "usage_usec") / 1e6
        if "cpuacct" not in self.dirs:  # a zygote's run: its rusage is its CPU time
            return 0.0
        text = _read(self.dirs["cpuacct"] / "cpuacct.usage").strip()
        return int(text) / 1e9 if text.isdigit() else 0.0

    def pids_refusals(self) -> int:
        return _counter(_read(self._file("pids", "pids.events", "pids.events")), "max")

    def kill(self) -> None:
        kill_cgroup(self.version, self.dirs)


def kill_cgroup(ver: int, dirs: dict[str, Path]) -> None:
    """Freeze, SIGKILL every member, thaw, and wait until the group is empty."""
    if ver == 2:
        unified = dirs["unified"]
        if (unified / "cgroup.kill").exists():
            _write(unified / "cgroup.kill", "1")
        procs = unified / "cgroup.procs"
    else:
        freezer = dirs.get("freezer")
        procs = (dirs.get("pids") or next(iter(dirs.values()))) / "cgroup.procs"
        if not _read(procs).split():
            return
        if freezer is not None and freezer.exists():
            _write(freezer / "freezer.state", "FROZEN")
        for pid in _read(procs).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if freezer is not None and freezer.exists():
            _write(freezer / "freezer.state", "THAWED")
    for pause in _backoff(2.0):
        remaining = _read(procs).split()
        if not remaining:
            return
        for pid in remaining:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(pause)


def _backoff(total: float):
    """Pauses from 0.2 ms doubling to 5 ms, adding up to `total` seconds: a group whose
    last process is being reaped empties within a millisecond or two, so poll fast first."""
    pause, spent = 0.0002, 0.0
    while spent < total:
        yield pause
        spent += pause
        pause = min(pause * 2, 0.005)


REMOVE_SECONDS = 5.0  # a dead run's processes may still be exiting (a gVisor sandbox)


@cleaner("cgroup")
def remove_cgroup(path_text: str) -> None:
    """Kill what is left in the group, then rmdir it, killing again while it is busy.

    The sweep after a SIGKILLed detain can come while the run's sandbox is still being
    torn down (its warden's `runsc delete`, a process exiting), or find the run's freezer
    left FROZEN by a detain killed inside kill_cgroup: a frozen v1 task does not die of
    SIGKILL until thawed, so every v1 group is killed through the run's freezer too."""
    path = Path(path_text)
    if not path.exists():
        return
    if (path / "cgroup.controllers").exists():
        ver, dirs = 2, {"unified": path}
    else:
        ver, dirs = 1, _v1_with_freezer(path)
    started = time.monotonic()
    for pause in _backoff(float("inf")):
        kill_cgroup(ver, dirs)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # Processes still leaving: worth the wait; an empty group that stays busy
            # (a child group nobody recorded) gets the second it always had.
            left = _read(path / "cgroup.procs").split()
            if time.monotonic() - started >= (REMOVE_SECONDS if left else 1.0):
                raise OSError(exc.errno, f"{exc.strerror} (processes still in it: "
                              f"{' '.join(left[:10]) or 'none'})", str(path)) from None
        time.sleep(pause)


def _v1_with_freezer(path: Path) -> dict[str, Path]:
    """A v1 group (ROOT/CONTROLLER/RELATIVE) and the same run's freezer group, if any."""
    controller = path.parent.parent.name
    dirs = {controller: path}
    try:
        relative = path.relative_to(ROOT / controller)
    except ValueError:
        return dirs
    freezer = ROOT / "freezer" / relative
    if controller != "freezer" and freezer.is_dir():
        dirs["freezer"] = freezer
    return dirs
