"""One directory per run, holding all of its temporary state, and the sweep of leftovers.

Each run dir holds a `journal` file that the owning detain process keeps flock()ed and
appends to, one JSON line per resource the run creates outside the dir (its uid, cgroups,
mounts, containers), written *before* the resource exists. Cleanup reads that list, so the
same code path serves the normal `finally` and the startup sweep that mops up after a
detain that was SIGKILLed mid-run. Appending (no rewrite) keeps a crash from ever leaving
a half-written list: a torn last line is simply ignored.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DetainError
from ..paths import state_dir
from ..report.safe_text import say
from . import tree

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

CLEANERS: dict[str, Callable[[Any], None]] = {}
JOURNAL = "journal"
STUCK = "stuck-"  # prefix of a run dir that could not be removed, set aside once
KINDS = ("run-", "zygote-")  # the dirs the sweep looks at
ORPHAN_SECONDS = 60
# The journal line a sweeper appends once it holds a dead run's lock: another sweep that
# finds the lock taken then knows no live detain holds it, only a sweep still at work.
SWEEPING = "sweeping"
SWEEP_WAIT = 15.0  # seconds a sweep waits for another sweep of the same dead run


def cleaner(kind: str):
    """Register how to remove one kind of resource recorded in a run's journal."""
    def register(func: Callable[[Any], None]) -> Callable[[Any], None]:
        CLEANERS[kind] = func
        return func
    return register


def _cleaner_for(kind: str, module: str) -> Callable[[Any], None] | None:
    """The cleaner for `kind`, importing the detain module that defines it if needed: the
    sweep may mop up after a backend this process has not loaded."""
    if kind not in CLEANERS and module.startswith("detain."):
        try:
            importlib.import_module(module)
        except ImportError:
            return None
    return CLEANERS.get(kind)


def base_dir() -> Path:
    """The state dir (paths.state_dir), created if needed and checked to be ours.

    The dir must be ours and not a symlink (/tmp is shared), mode 0711 so a sandbox uid can
    reach its own run's files but list nobody's.
    """
    path = Path(state_dir())
    try:
        path.mkdir(mode=0o711, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise DetainError(f"cannot create detain's state dir {path}: {exc.strerror}; set "
                          "DETAIN_STATE_DIR to a writable directory") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise DetainError(f"{path} is not a directory owned by you (possible tampering); "
                          "remove it or set DETAIN_STATE_DIR")
    if stat.S_IMODE(info.st_mode) != 0o711:
        os.chmod(path, 0o711)
    return path


class RunDir:
    """The per-run directory; use as a context manager so cleanup runs in `finally`."""

    def __init__(self, kind: str = "run") -> None:
        """`kind` names the dir: "run", or "zygote" (a warm Sandbox's, host/zygote.py)."""
        base = base_dir()
        self.path = Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=base))
        os.chmod(self.path, 0o711)
        # Locked before it is visible under its name: a sweep in another thread or process
        # must never find this journal unlocked and take the newborn run for a dead one.
        unborn = self.path / f"{JOURNAL}.new"
        self._journal = os.open(unborn, os.O_CREAT | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC,
                                0o600)
        fcntl.flock(self._journal, fcntl.LOCK_EX)
        os.rename(unborn, self.path / JOURNAL)
        self.state: dict[str, list] = {}

    def subdir(self, name: str, mode: int = 0o700) -> Path:
        path = self.path / name
        path.mkdir(mode=mode)
        os.chmod(path, mode)
        return path

    def record(self, kind: str, value: Any) -> None:
        """Note a resource created outside this dir before it exists, so a crash leaves a trace."""
        self.state.setdefault(kind, []).append(value)
        module = CLEANERS[kind].__module__
        try:
            os.write(self._journal, (json.dumps([kind, value, module]) + "\n").encode())
        except OSError as exc:  # a full or read-only state dir: say so, in one line
            raise DetainError(f"cannot write detain's run journal in {self.path.parent}: "
                              f"{exc.strerror}; free some space there or set "
                              "DETAIN_STATE_DIR") from None

    def covered(self, kind: str) -> None:
        """Leave `kind` to the sweep only: another resource's cleanup already ends it (a
        fresh uid whose every process is in the run's cgroup, which is killed first). The
        journal keeps it, so a sweep after a crash still removes it."""
        self.state.pop(kind, None)

    def close(self) -> None:
        try:
            release(self.path, self.state)
        finally:
            os.close(self._journal)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def release(path: Path, state: dict[str, list]) -> None:
    """Remove everything a run created: resources in reverse order, then the dir itself."""
    errors = _release_resources(state)
    left = _remove_dir(path)
    if left is not None:
        errors.append(left)
    if errors:
        raise DetainError("cleanup was incomplete: " + "; ".join(errors))


def _release_resources(state: dict[str, list]) -> list[str]:
    errors = []
    for kind in reversed(list(state)):
        for value in reversed(state[kind]):
            try:
                CLEANERS[kind](value)
            except Exception as exc:  # keep going: one stuck resource must not leak the rest
                errors.append(f"{kind} {value}: {exc}")
    return errors


def _remove_dir(path: Path) -> str | None:
    """Remove a run dir; None when it is gone, else what is left and where. A dir that
    cannot be removed entirely is set aside, so it is reported once and never retried."""
    try:
        tree.remove(path)
    except OSError as exc:
        return f"{exc.strerror or exc}; {_set_aside(path)}"
    return None


def _set_aside(path: Path) -> str:
    """Rename a run dir that could not be removed out of the sweep's way ("stuck-…": the
    sweep only looks at "run-…"), and say where it went and what to do."""
    aside = path.with_name(f"{STUCK}{path.name}")
    try:
        os.rename(path, aside)
    except OSError as exc:
        return f"{path} could not be set aside either ({exc.strerror}); remove it by hand"
    return f"what is left is in {aside}: remove it by hand (as root if root's run left it)"


def sweep() -> int:
    """Clean up runs whose detain process died (their lock is free). Returns how many.

    Each leftover is on its own: one that cannot be removed is reported once (a `detain:`
    line on stderr: the sweep runs inside an unrelated run, which it must never stop) and
    set aside."""
    try:
        base = base_dir()
        entries = list(os.scandir(base))
    except (DetainError, OSError):
        return 0
    swept = 0
    for entry in entries:
        if not entry.name.startswith(KINDS) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            swept += _sweep_one(Path(entry.path))
        except Exception as exc:  # a hostile leftover must not stop this run
            say(f"leftover run dir {entry.path}: {exc}")
    return swept


def _sweep_one(path: Path) -> int:
    try:
        lock = os.open(path / JOURNAL, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except OSError as exc:
        # No journal: a run that died between mkdtemp and its first write (or whose own
        # cleanup got halfway), or one being born right now in another process; only the
        # former is old.
        if exc.errno == errno.ENOENT and _age(path) > ORPHAN_SECONDS:
            _release_dead(path, {})
            return 1
        return 0
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # Its detain is alive; or it died and another sweep (its warden's, another
            # start's) is removing it now: waited for, so that what this sweep returns
            # to is a host where the dead run is gone, not one where it is half gone.
            if not _being_swept(lock) or not _await_lock(lock, SWEEP_WAIT):
                return 0
            if os.fstat(lock).st_nlink == 0:
                return 0  # that sweep removed it all
        state = _read_journal(lock)
        try:
            os.write(lock, (json.dumps([SWEEPING, os.getpid(), ""]) + "\n").encode())
        except OSError:
            pass  # a full state dir: another sweep then just skips it meanwhile
        _release_dead(path, state)  # under the lock: no other sweep joins in
        return 1
    finally:
        os.close(lock)


def _being_swept(fd: int) -> bool:
    """Whether a sweep holds this journal's lock (its SWEEPING line), not a live detain."""
    try:
        text = os.pread(fd, 1 << 20, 0)
    except OSError:
        return False
    return any(line.startswith(b'["%s"' % SWEEPING.encode()) for line in text.splitlines())


def _await_lock(fd: int, timeout: float) -> bool:
    """Take the lock on `fd` within `timeout` seconds (polled: flock has no timeout)."""
    deadline, pause = time.monotonic() + timeout, 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _release_dead(path: Path, state: dict[str, list]) -> None:
    """A dead run's resources get one try, quietly as before; a dir that stays is said."""
    _release_resources(state)
    left = _remove_dir(path)
    if left is not None:
        say(f"a dead run's dir could not be removed: {left}")


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0


def _read_journal(fd: int) -> dict[str, list]:
    state: dict[str, list] = {}
    with os.fdopen(os.dup(fd), "rb") as handle:
        for line in handle.read(1 << 20).splitlines():
            try:
                kind, value, module = json.loads(line)
            except (ValueError, TypeError):
                continue
            if isinstance(kind, str) and isinstance(module, str) and _cleaner_for(kind, module):
                state.setdefault(kind, []).append(value)
    return state
