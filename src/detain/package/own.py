"""What detain itself did around a package, so that it never shows as the package's.

A phase runs detain's phase script, which builds a venv and starts pip; pip starts its
build backend; only the package's code (setup.py, its build hooks, its modules) is what the
report is about. The audit hook already names the package's own frames; what is left here:

* the phase script's own events (they carry no `via`: code exec'd on its behalf, such as a
  .pth line, does) and the child audit hook's own files;
* a dependency's file work that is not sensitive (setuptools writing egg-info when setup.py
  calls `setup()`): the hook marks it `through`;
* seen from outside (kernel/runtime), the processes detain started: the launcher running
  the install phase (pip's parent; the package's code never runs in it) and every pip,
  build tools started during install (whoever started them), and file work in the build's
  temp dir. Anything the verdict counts as a signal is kept, whoever did it.
"""

from __future__ import annotations

import os
from typing import Any

from ..guest import LAUNCHER
from ..guest.package_phase import CHILD_LOG_DIR, CHILD_NAMES
from ..policy import SCRATCH
from ..report.events import KERNEL
from ..report.verdict import build_tool_started, mark_dropped, signals

PHASE_SCRIPT = LAUNCHER.with_name("package_phase.py")
BUILD_TEMP = f"{SCRATCH}/tmp/"  # package_phase.py's TMPDIR for pip and its builds
CHILD_LOGS = f"{SCRATCH}/{CHILD_LOG_DIR}/"
PIP_ENTRIES = (".whl/pip", ".whl/pip/__pip-runner__.py")  # package_phase.pip_entries
WRITABLE = (f"{SCRATCH}/", "/tmp/", "/var/tmp/", "/dev/shm/", "/run/")  # in a phase


class Own:
    """Decides, for one phase's events, which are detain's doing."""

    def __init__(self, phase: str, events: list[dict[str, Any]], allowed: list[str]) -> None:
        self.allowed = allowed
        self.pids: set[int] = set()
        if phase == "install":
            for event in events:
                detail = event.get("detail") or {}
                if event.get("event") == "kernel.execve" and _is_pip(detail.get("argv")):
                    # pip's parent is the launcher (or pip, installing build requirements)
                    self.pids.update((detail.get("pid"), detail.get("ppid")))
        self.pids.discard(None)
        mark_dropped(events, lambda e: (e.get("detail") or {}).get("pid") in self.pids
                     or self._phase_script(e))

    def __call__(self, event: dict[str, Any]) -> bool:
        detail = event.get("detail") or {}
        where = str(detail.get("path") or detail.get("target") or "")
        if where.endswith(CHILD_NAMES) and (event.get("category") == "file-read"
                                            or detail.get("pid") in self.pids):
            return True  # the child audit hook's files read, or written by detain
        if event.get("provenance") == KERNEL:
            return self._kernel(event, detail, where)
        if self._phase_script(event):
            return True
        return bool(event.get("through")) and event["category"] in (
            "file-read", "file-write", "fd") and event["severity"] != "high" and not signals(
            [event], self.allowed)

    @staticmethod
    def _phase_script(event: dict[str, Any]) -> bool:
        """An event of the phase script's own code (code exec'd for it, a .pth line,
        carries `via`; a child process's carries its pid)."""
        return event.get("file") == PHASE_SCRIPT.name and not event.get("via") \
            and event.get("pid") is None

    def _kernel(self, event: dict[str, Any], detail: dict[str, Any], where: str) -> bool:
        if not self.pids or signals([event], self.allowed):
            return False
        if detail.get("pid") in self.pids:
            return True
        if event.get("event") == "kernel.execve":  # a compiler, git, lsb_release's tools
            return build_tool_started(event) and not detail.get("unhooked")
        # the build's churn: its temp dir, and paths relative to the dir it builds in
        return event["category"] in ("file-read", "file-write") and (
            where.startswith((BUILD_TEMP, CHILD_LOGS)) or not where.startswith("/"))


def _is_pip(argv: Any) -> bool:
    """detain's pip, as package_phase.py and pip itself start it: the interpreter's bundled
    pip wheel by its path (pip_entries), never a `pip` the package could have written (a
    `-m pip` found on a PYTHONPATH, a wheel copied to a writable dir)."""
    words = str(argv or "").split()
    return len(words) > 2 and os.path.basename(words[0]).startswith("python") and any(
        w.endswith(PIP_ENTRIES) and "/pip-" in w and not w.startswith(WRITABLE)
        for w in words[1:3])
