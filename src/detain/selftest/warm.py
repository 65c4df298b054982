"""`detain selftest --warm`: the battery against runs forked by a warm Sandbox's zygote.

A warm Sandbox on bwrap (as root) or landlock forks each run from its zygote, and the run
confines itself (host/zygote.py); that is a different way to the same confinement, so it
is attacked on its own. Each probe's policy gets a Sandbox and so a zygote, and each
attack a run forked from it with the attack's label (the host finds the job's processes
by it). A policy no zygote serves (a network allow-list, copy-out, ...) runs as usual.
"""

from __future__ import annotations

import threading
from typing import Any

from ..api import Sandbox
from ..job import Job
from ..policy import Policy
from ..result import Result


class WarmBackend:
    """Stands in for a backend in a selftest Target; `run` forks from a zygote."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._boxes: list[tuple[Policy, Sandbox]] = []  # one per policy (not hashable)
        self._lock = threading.Lock()
        self.forked = 0  # runs that came from a zygote

    def __getattr__(self, name: str) -> Any:
        if name == "backend":  # not set yet (copy.copy makes an instance without __init__)
            raise AttributeError(name)
        return getattr(self.backend, name)

    def run(self, job: Job, policy: Policy, *, stdout=None, stderr=None,
            label: str | None = None) -> Result:
        with self._lock:
            box = next((b for p, b in self._boxes if p == policy), None)
            if box is None:
                box = Sandbox(policy, backend=self.backend.name)
                self._boxes.append((policy, box))
        zygote = box.zygote()
        if zygote is None:
            return self.backend.run(job, policy, stdout=stdout, stderr=stderr, label=label)
        with self._lock:
            self.forked += 1
        started = self.backend.start(policy, label=label, forker=zygote.fork)
        return self.backend.finish(started, job, stdout=stdout, stderr=stderr)

    def close(self) -> None:
        with self._lock:
            boxes, self._boxes = [b for _, b in self._boxes], []
        for box in boxes:
            box.close()
