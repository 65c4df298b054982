"""At most N micro-VMs at once (N = cores by default): a queue of flock()ed slot files.

Under TCG each VM keeps a core busy, so more VMs than cores only make every run slower
and push wall-clock limits over. A slot is a lock file in the cache dir; the lock's fd is
handed to QEMU itself, so it is held exactly as long as the VM lives and is released by the
kernel however detain or QEMU end (even SIGKILL): no stale slot can block later runs.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

POLL_SECONDS = 0.02


def limit() -> int:
    """`DETAIN_MICROVM_MAX` when set, else the number of cores this process may use."""
    configured = os.environ.get("DETAIN_MICROVM_MAX", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, len(os.sched_getaffinity(0)))


def acquire(directory: Path, deadline: float | None = None) -> int | None:
    """An fd holding one free slot, waiting in line for one; None when `deadline` passes."""
    directory.mkdir(parents=True, exist_ok=True)
    fds = [os.open(directory / f"slot-{n}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
           for n in range(limit())]
    try:
        while True:
            for fd in fds:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                fds.remove(fd)
                return fd
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)
    finally:
        for fd in fds:
            os.close(fd)
