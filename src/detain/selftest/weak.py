"""The control: bwrap deliberately misconfigured, to prove the judges can see an escape.

A probe whose judge never sees anything proves nothing, so the test suite runs the whole
harmless battery against this backend and expects escapes in every group. It is bwrap
with every protection taken away: the host's whole filesystem bound read-write, the
caller's environment, the caller's uid (root stays root), host network, pids and IPC, no
seccomp filter, and the interpreter without -I/-S. It lives here, never in the backend
registry, so no policy can select it; its level is 0, so the battery's dangerous probes
never run on it.
"""

from __future__ import annotations

import os

from ..backends.base import Launch, RunContext
from ..backends.bwrap import BwrapBackend, find_bwrap
from ..errors import BackendUnavailable
from ..guest import LAUNCHER


class WeakBwrapBackend(BwrapBackend):
    name = "bwrap-weak"
    # Started with its job on the command line, as the caller's environment must reach
    # the job unchanged (a launcher started ahead would get the policy's in its message).
    warm = False

    @property
    def level(self) -> int:
        return 0

    def launch(self, ctx: RunContext) -> Launch:
        found = find_bwrap()
        if found is None:
            raise BackendUnavailable(self.probe().reason)
        ctx.setup.uid = None  # the job keeps the caller's uid: root, when detain is root
        command = ctx.guest_command(ctx.interpreter.executable, str(LAUNCHER), str(ctx.job_dir))
        del command[1:1 + len(ctx.policy.interpreter_flags)]
        argv = [found[0], "--dev-bind", "/", "/", "--chdir", str(ctx.scratch), "--", *command]
        # HOME stays the scratch dir: probes that plant start-up hooks in HOME must not
        # plant them in the real one, where every Python on this host would run them.
        return Launch(argv, env={**os.environ, "HOME": str(ctx.scratch)})


BACKEND = WeakBwrapBackend()
