"""Level 1: the hardened interpreter, with no namespaces of its own.

Isolated mode, an empty environment, rlimits set by the launcher, its own session, and
(when detain runs as root) a fresh unprivileged uid, no-new-privs, and a private mount
namespace in which every world-writable directory is covered by an empty read-only tmpfs:
the uid owns nothing on the host, so its scratch dir is the only place it can write.
Run unprivileged, the job runs as you and can read and write what you can: that is what
level 1 means, and why `auto` prefers level 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ProtectionError
from ..guest import LAUNCHER
from ..host.warden import Warden
from . import Probe
from .base import Backend, Launch, RunContext

WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


class ProcessBackend(Backend):
    name = "process"
    warm = True
    hide_world_writable = True  # as root: cover them, so the uid can write only scratch

    def probe(self) -> Probe:
        # platform.python_version()'s answer, without importing platform on the run path
        return Probe(True, version=f"Python {sys.version.split()[0]}")

    def launch(self, ctx: RunContext) -> Launch:
        if ctx.policy.mounts:
            raise ProtectionError(f"the {self.name} backend has no mount namespace, so "
                                  "--mount cannot be honoured; use --backend bwrap (or auto)")
        setup = ctx.setup
        setup.no_new_privs = True
        interp = ctx.interpreter
        self.plan_hiding(ctx)
        staged = setup.prepare_stage(ctx.run.path,
                                     [Path(d) for d in interp.bind_dirs] + [LAUNCHER.parent])
        python = setup.remap(interp.executable, staged)
        launcher = setup.remap(str(LAUNCHER), staged)
        return Launch(ctx.guest_command(python, launcher, str(ctx.job_dir)),
                      env=self.guest_environment(ctx), cwd=str(ctx.scratch))

    def warden(self, ctx: RunContext) -> Warden:
        """Reap mode: with no pid namespace (and unprivileged no cgroup or uid either),
        only an ancestor that is a child subreaper still holds the job's orphans."""
        return Warden("reap", ctx.run.path)

    def kill(self, ctx: RunContext, proc) -> None:
        """The warden kills every descendant before the process group goes: killing it
        first would hand the job's orphans to init."""
        warden = getattr(proc, "warden", None)
        if warden is not None:
            warden.end(proc)
        super().kill(ctx, proc)

    def guest_home(self, ctx: RunContext) -> str:
        return str(ctx.scratch)  # no mount namespace: the host path is the sandbox's

    def plan_hiding(self, ctx: RunContext) -> None:
        """Decide which world-writable dirs to cover before anything is staged: a source
        under one of them (detain installed under /tmp) must be staged to stay visible."""
        if ctx.uid is not None and self.hide_world_writable:
            run_path = str(ctx.run.path)
            ctx.setup.hide = [d for d in WORLD_WRITABLE
                              if os.path.isdir(d) and not run_path.startswith(d + "/")]

    def host_assurance(self, ctx: RunContext, seen: dict) -> dict:
        return {"hidden_dirs": list(ctx.setup.hide),
                "private_mount_namespace": bool(ctx.setup.hide or ctx.setup.stage)}


BACKEND = ProcessBackend()
