"""Warm Sandboxes kept per policy, for a long-lived process such as `detain serve`.

Each request may bring its own policy (flags, a policy file, the user's config),
so one warm Sandbox is kept for each of the few policies seen last; a new policy's first
run starts cold and leaves spares for the next run with the same policy. A spare is
bound to the policy it was confined for, so a policy is only ever served by its own.
"""

from __future__ import annotations

from .api import Sandbox
from .policy import Policy

KEEP = 4  # policies kept warm at once; the least recently used one is closed beyond that


class SandboxPool:
    def __init__(self, warm: int = 1, keep: int = KEEP) -> None:
        self.warm = warm
        self.keep = keep
        self._boxes: list[Sandbox] = []  # most recently used last

    def sandbox(self, policy: Policy) -> Sandbox:
        """The warm Sandbox for `policy`, made on first use (its backend chosen then)."""
        box = next((b for b in self._boxes if b.policy == policy), None)
        if box is None:
            box = Sandbox(policy)
            if box.backend.warm:
                box.keep_warm(self.warm)
            self._boxes.append(box)
            while len(self._boxes) > self.keep:
                self._boxes.pop(0).close()
        else:
            self._boxes.remove(box)
            self._boxes.append(box)
        return box

    def close(self) -> None:
        boxes, self._boxes = self._boxes, []
        for box in boxes:
            box.close()
