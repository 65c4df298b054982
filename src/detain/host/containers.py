"""Removing containers and runsc sandboxes that a run started, even after detain died.

A run records the exact command that removes its container (the engine's `rm --force`,
or `runsc delete --force`) before starting it, in the run's root-owned
journal, so the startup sweep can remove the containers of a detain that was SIGKILLed.
"""

from __future__ import annotations

import subprocess
import time

from .rundir import cleaner

REMOVE_TIMEOUT = 60
KIND = "container"


@cleaner(KIND)
def remove_container(record: dict) -> None:
    argv, env = record.get("remove"), record.get("env") or {}
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise RuntimeError(f"malformed container record {record!r}")
    deadline = time.monotonic() + REMOVE_TIMEOUT
    while True:
        done = subprocess.run(argv, env={str(k): str(v) for k, v in env.items()},
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=REMOVE_TIMEOUT, check=False)
        if done.returncode == 0 or _already_gone(done.stderr):
            return
        # The engine is removing it already (its client was killed): wait for that.
        if b"already in progress" not in done.stderr or time.monotonic() > deadline:
            detail = done.stderr.decode(errors="replace")[-300:]
            raise RuntimeError(f"{' '.join(argv)} failed: {detail}")
        time.sleep(0.1)


def _already_gone(stderr: bytes) -> bool:
    text = stderr.decode(errors="replace").lower()
    return any(s in text for s in ("no such container", "does not exist", "not found",
                                   "no container with name"))
