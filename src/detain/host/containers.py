"""Removing containers and runsc sandboxes that a run started, even after detain died.

A run records the exact command that removes its container (the engine's `rm --force`,
or `runsc delete --force`) before starting it, in the run's root-owned
journal, so the startup sweep can remove the containers of a detain that was SIGKILLed.
"""

from __future__ import annotations

import subprocess

from .rundir import cleaner

REMOVE_TIMEOUT = 60
KIND = "container"


@cleaner(KIND)
def remove_container(record: dict) -> None:
    argv, env = record.get("remove"), record.get("env") or {}
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise RuntimeError(f"malformed container record {record!r}")
    done = subprocess.run(argv, env={str(k): str(v) for k, v in env.items()},
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=REMOVE_TIMEOUT,
                          check=False)
    if done.returncode != 0 and not _already_gone(done.stderr):
        detail = done.stderr.decode(errors="replace")[-300:]
        raise RuntimeError(f"{' '.join(argv)} failed: {detail}")


def _already_gone(stderr: bytes) -> bool:
    text = stderr.decode(errors="replace").lower()
    return any(s in text for s in ("no such container", "does not exist", "not found",
                                   "no container with name"))
