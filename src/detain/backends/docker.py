"""Level 2: a container through a Docker engine, when one answers.

Docker cannot start a container from a directory, so the registry-less skeleton is
imported once as a local image (`detain-rootfs:<digest>`, a few KiB of empty mount points)
and reused; `--image` uses a local image instead. With only the client installed, the probe
says the engine is missing.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tarfile

from ..errors import BackendUnavailable, DetainError
from ..host import rootfs
from . import Probe
from .base import RunContext
from .engine import EngineBackend, engine_env

PROBE_TIMEOUT = 10
IMPORT_TIMEOUT = 120


def _server_version(docker: str) -> tuple[str | None, str]:
    try:
        done = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, env=engine_env(),
                              timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    if done.returncode != 0 or not done.stdout.strip():
        detail = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return None, detail
    return done.stdout.strip(), ""


@functools.lru_cache(maxsize=16)
def _imported(docker: str, tag: str, host: str | None) -> bool:
    """Whether the engine at `host` already has `tag` (asked once per process)."""
    done = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", tag],
                          capture_output=True, env=engine_env(), timeout=PROBE_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    return done.returncode == 0


def _skeleton_tar(root: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(root, arcname=".")
    return buffer.getvalue()


class DockerBackend(EngineBackend):
    name = "docker"

    def probe(self) -> Probe:
        docker = shutil.which("docker")
        if docker is None:
            return Probe(False, "docker is not installed; apt install docker.io and start "
                                "dockerd")
        version, detail = _server_version(docker)
        if version is None:
            return Probe(False, f"no Docker engine answers ({detail}); start dockerd or set "
                                "DOCKER_HOST")
        return Probe(True, version=version, details=(("path", docker),))

    def trace_refusal(self) -> str:
        return ("docker cannot be traced from outside: dockerd, not detain, starts the "
                "container and takes no per-run OCI hook, so no tracer can seize it before "
                "the job runs; use --backend podman (as root), bwrap, landlock or gvisor")

    def engine(self, ctx: RunContext) -> tuple[list[str], dict[str, str]]:
        docker = shutil.which("docker")
        if docker is None:
            raise BackendUnavailable(self.probe().reason)
        return [docker], engine_env()

    def root(self, ctx: RunContext) -> list[str]:
        if ctx.policy.image:
            return [ctx.policy.image]
        # Docker makes --mount targets in the container's own layer: the cached skeleton
        # (one image) serves every run.
        skeleton = rootfs.skeleton(ctx.interpreter.bind_dirs)
        tag = f"detain-rootfs:{skeleton.name.removeprefix('rootfs-')}"
        docker = self.engine(ctx)[0][0]
        if not _imported(docker, tag, os.environ.get("DOCKER_HOST")):
            done = subprocess.run([docker, "import", "-", tag], input=_skeleton_tar(str(skeleton)),
                                  capture_output=True, env=engine_env(), timeout=IMPORT_TIMEOUT)
            if done.returncode != 0:
                raise DetainError("could not import detain's root skeleton into Docker: "
                                  + done.stderr.decode(errors="replace").strip()[-300:])
            _imported.cache_clear()
        return [tag]


BACKEND = DockerBackend()
