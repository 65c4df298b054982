"""Level 2: a podman container, rootless when detain runs as an ordinary user.

The root is the registry-less skeleton itself (`--rootfs`), or a local `--image`. Two
facts of this kind of host shape the command:
  * crun cannot create containers on a hybrid cgroup v1/v2 layout ("cgroups in hybrid
    mode not supported"), so runc is chosen whenever the cgroup layout is not pure v2;
  * rootless podman on cgroup v1 has no cgroup to put limits in: it silently ignores
    them. detain then passes none and relies on the launcher's rlimits (RLIMIT_AS for
    memory), and the assurance says so.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from ..errors import BackendUnavailable
from ..host import cgroups
from ..host.tools import tool_version
from . import Probe
from .base import RunContext
from .engine import EngineBackend, engine_env

RUNTIME_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin", "/sbin", "/bin")


@functools.lru_cache(maxsize=1)
def _version(podman: str) -> str | None:
    return tool_version(podman, r"(\d+\.\d+\.\d+)", env=engine_env())


def hybrid_cgroups() -> bool:
    """cgroup v1 controllers with a v2 hierarchy beside them, as on this kind of host."""
    return not (cgroups.ROOT / "cgroup.controllers").exists()


def find_runtime() -> tuple[str, str] | None:
    """The OCI runtime to use and why: crun on pure cgroup v2, else runc."""
    def locate(name: str) -> str | None:
        found = shutil.which(name)
        if found:
            return found
        return next((f"{d}/{name}" for d in RUNTIME_DIRS if os.access(f"{d}/{name}", os.X_OK)),
                    None)
    if not hybrid_cgroups():
        crun = locate("crun")
        if crun:
            return crun, "crun (cgroup v2)"
    runc = locate("runc")
    if runc:
        reason = ("runc: crun cannot create containers on this host's hybrid cgroup v1/v2 "
                  "layout" if hybrid_cgroups() else "runc (crun not installed)")
        return runc, reason
    return None


def _subids(name: str, uid: int) -> bool:
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            entries = {line.split(":", 1)[0] for line in Path(path).read_text().splitlines()}
        except OSError:
            return False
        if name not in entries and str(uid) not in entries:
            return False
    return True


class PodmanBackend(EngineBackend):
    name = "podman"
    engine_cgroups = ("conmon",)  # podman puts conmon in <cgroup-parent>/conmon

    def probe(self) -> Probe:
        podman = shutil.which("podman")
        if podman is None:
            return Probe(False, "podman is not installed; apt install podman runc uidmap")
        version = _version(podman)
        if version is None:
            return Probe(False, f"{podman} --version failed")
        runtime = find_runtime()
        if runtime is None:
            return Probe(False, "no usable OCI runtime: crun fails on hybrid cgroups and runc "
                                "is not installed; apt install runc", version)
        if os.geteuid() != 0:
            import pwd

            user = pwd.getpwuid(os.geteuid()).pw_name
            if not _subids(user, os.geteuid()) or not shutil.which("newuidmap"):
                return Probe(False, f"rootless podman needs subordinate ids for {user} in "
                                    "/etc/subuid and /etc/subgid and newuidmap (apt install "
                                    "uidmap; usermod --add-subuids/--add-subgids)", version)
        return Probe(True, version=version, details=(("path", podman), ("runtime", runtime[1]),
                                                     ("mode", self.mode())))

    @property
    def outside_trace(self) -> bool:  # type: ignore[override]
        """Rootful only: the tracer (host/trace_hook.py) must ptrace the container's init."""
        return os.geteuid() == 0

    def trace_refusal(self) -> str:
        return ("rootless podman cannot be traced from outside (the tracer would need to "
                "ptrace the container's init, which runs in podman's user namespace); run "
                "detain as root, or use --backend bwrap or landlock")

    @staticmethod
    def mode() -> str:
        return "rootful" if os.geteuid() == 0 else "rootless"

    def engine(self, ctx: RunContext) -> tuple[list[str], dict[str, str]]:
        podman = shutil.which("podman")
        runtime = find_runtime()
        if podman is None or runtime is None:
            raise BackendUnavailable(self.probe().reason)
        ctx.extra["runtime"] = runtime[1]
        # --log-level error: podman's warnings (a rootless "/ is not a shared mount") would
        # otherwise land in the job's stderr.
        prefix = [podman, "--log-level", "error", "--runtime", runtime[0]]
        if os.geteuid() == 0:
            prefix += ["--cgroup-manager", "cgroupfs"]
        return prefix, engine_env()

    def root(self, ctx: RunContext) -> list[str]:
        if ctx.policy.image:
            return [ctx.policy.image]
        return ["--rootfs", str(self.skeleton(ctx))]

    def engine_flags(self, ctx: RunContext) -> list[str]:
        # podman adds /etc/hosts and passwd entries into the root: both off, so the shared
        # skeleton is never written to.
        flags = ["--no-hosts", "--passwd=false", "--read-only-tmpfs=false"]
        if os.geteuid() != 0:
            flags += ["--userns", "keep-id"]  # the caller's ids inside, owning the scratch dir
        return flags

    def remove(self, prefix: list[str], name: str) -> list[str]:
        return [*prefix, "rm", "--force", "--time", "0", name]  # no 10 s grace period

    def describe_engine(self, ctx: RunContext) -> dict:
        return {"name": "podman", "mode": self.mode(), "runtime": ctx.extra.get("runtime"),
                "version": _version(shutil.which("podman") or "podman")}


BACKEND = PodmanBackend()
