"""Backends driven through a container engine's command line: podman and docker.

Both take the same `run` flags for what detain needs, so the command is built here once;
a subclass says which engine binary and global flags to use, what the root file system is
(podman: the skeleton dir itself; docker: an image imported from it) and how the engine's
own additions to the environment are removed.
"""

from __future__ import annotations

import os
import subprocess

from ..host import containers, seccomp_oci
from ..host.rootfs import Bind
from ..policy import SCRATCH
from .base import Launch, RunContext
from .container import ContainerBackend

TYPE_CHECKING = False  # as in base.py: typing is not imported at run time
if TYPE_CHECKING:
    from ..host.tracer import OutsideTrace

STOP_TIMEOUT = 60
ENV = "/usr/bin/env"  # the container's command, which execs the launcher
HOOK_DIR = "trace-hooks"  # in the run dir: the engine's --hooks-dir when traced


class EngineBackend(ContainerBackend):
    """A container started with `ENGINE run --rm …`, attached to detain's pipes."""

    # runc's init (a multi-threaded Go process: threads count as pids), conmon and the
    # engine's exit hooks share the run's pids cgroup; the job's own processes are capped
    # by RLIMIT_NPROC on its fresh uid.
    extra_pids = 32
    supports_image = True

    def engine(self, ctx: RunContext) -> tuple[list[str], dict[str, str]]:
        """The engine's argv prefix (binary and global flags) and environment."""
        raise NotImplementedError

    def root(self, ctx: RunContext) -> list[str]:
        """The arguments naming the container's root: an image, or podman's `--rootfs DIR`."""
        raise NotImplementedError

    def engine_flags(self, ctx: RunContext) -> list[str]:
        """Engine-specific `run` flags (podman's env and passwd handling, for instance)."""
        return []

    def wrap(self, ctx: RunContext, command: list[str]) -> list[str]:
        """Engines add variables of their own (HOSTNAME, container=podman) that no flag
        removes, so the launcher starts through `env -i` with exactly the policy's."""
        env = [f"{k}={v}" for k, v in self.guest_environment(ctx).items()]
        return [ENV, "-i", *env, *command]

    def container_launch(self, ctx: RunContext, binds: list[Bind], command: list[str],
              user: tuple[int, int]) -> Launch:
        lim = ctx.policy.limits
        prefix, env = self.engine(ctx)
        name = f"detain-{ctx.run.path.name}"
        ctx.extra["container"] = name
        traced = bool(ctx.policy.trace)  # the tracer's hook and stops (host/trace_hook.py)
        argv = [*prefix, *(["--hooks-dir", str(ctx.run.path / HOOK_DIR)] if traced else ()),
                "run", "--rm", "--name", name, "--label", f"detain.run={ctx.run.path}",
                "--network", "none", "--read-only", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges",
                "--security-opt", f"seccomp={seccomp_oci.profile_path(traced)}",
                "--user", f"{user[0]}:{user[1]}", "--workdir", SCRATCH, "--hostname", "detain",
                "--ulimit", f"nofile={lim.open_files}:{lim.open_files}",
                "--ulimit", f"nproc={lim.processes}:{lim.processes}",
                "--tmpfs", f"/tmp:rw,nosuid,nodev,size={lim.disk_bytes},mode=1777",
                "--shm-size", str(min(lim.disk_bytes, lim.memory_bytes)),
                "--log-driver", "none", "--pull", "never"]
        if ctx.job is None or ctx.job.stdin is not None:  # a spare's job may bring stdin
            argv.append("--interactive")
        parent = self.cgroup_parent(ctx)
        if parent is not None:
            argv += ["--cgroup-parent", parent]
        for bind in binds:
            argv += ["--mount", f"type=bind,source={bind.source},destination={bind.target}"
                     + ("" if bind.writable else ",readonly")]
        argv += self.engine_flags(ctx)
        ctx.run.record(containers.KIND, {"remove": self.remove(prefix, name), "env": env})
        argv += [*self.root(ctx), *self.wrap(ctx, command)]
        return Launch(argv, env=env)

    def outside_tracer(self, ctx: RunContext, launch: Launch) -> OutsideTrace:
        """Joined by the engine's OCI hook (host/trace_hook.py), not by a fork-exec step:
        detain's own child is the engine's client, which is never traced; the command's
        `env` is the machinery, its exec of the launcher the job's first."""
        from ..host.trace_hook import HookedTrace  # only traced runs load the tracer

        return HookedTrace(ctx.run.path, ENV, HOOK_DIR)

    def remove(self, prefix: list[str], name: str) -> list[str]:
        """The command that removes the container at once, running or not."""
        return [*prefix, "rm", "--force", name]

    def stop(self, ctx: RunContext) -> None:
        prefix, env = self.engine(ctx)
        subprocess.run(self.remove(prefix, ctx.extra["container"]), env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=STOP_TIMEOUT,
                       check=False)
        ctx.extra["removed"] = True

    def kill(self, ctx: RunContext, proc) -> None:
        super().kill(ctx, proc)
        if "container" in ctx.extra and proc.returncode is not None and (
                proc.returncode >= 0 or ctx.extra.get("removed")):
            # `run --rm` has removed the container by the time the client exits by itself
            # (or the forced removal above did): this run's cleanup has nothing left to do.
            # A client killed from outside (a spare's, by the OOM killer) removed nothing,
            # so its record stays for cleanup. The journal keeps it either way; a sweep
            # after a crash finds the container gone.
            ctx.run.state.pop("container", None)

    def host_assurance(self, ctx: RunContext, seen: dict) -> dict:
        return {**super().host_assurance(ctx, seen), "engine": self.describe_engine(ctx),
                "seccomp_profile": "detain's (replaces the engine default)"}

    def describe_engine(self, ctx: RunContext) -> dict:
        return {"name": self.name}


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for the engine client: PATH for its helpers, and no secrets."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")}
    for key in ("XDG_RUNTIME_DIR", "HOME", "DOCKER_HOST", "CONTAINER_HOST", "USER"):
        if key in os.environ:
            env[key] = os.environ[key]
    return {**env, **(extra or {})}
