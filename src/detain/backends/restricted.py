"""Level 1: RestrictedPython on top of the `process` backend, shown for comparison.

Many users reach for RestrictedPython to run untrusted snippets. Here it compiles the job
inside the process backend's sandbox (guest/restricted.py), so its language-level guards
add to, never replace, the process confinement; `selftest` shows what it does and does not
stop. RestrictedPython forbids arbitrary imports, so only `-c` snippets and single
scripts run, and `--with/--requirements` are refused.

The guest runs the base interpreter in isolated mode without site-packages, so the host's
RestrictedPython package is shown to it read-only through a run-local directory holding
only a link to that package.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from ..errors import DetainError
from ..job import Job
from . import Probe
from .base import Launch, RunContext
from .process import ProcessBackend


@functools.lru_cache(maxsize=1)
def package_dir() -> Path | None:
    """The RestrictedPython package directory detain itself would import, if installed."""
    spec = importlib.util.find_spec("RestrictedPython")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


class RestrictedBackend(ProcessBackend):
    name = "restricted"

    def probe(self) -> Probe:
        found = package_dir()
        if found is None:
            return Probe(False, "RestrictedPython is not installed; pip install RestrictedPython")
        from importlib.metadata import version

        return Probe(True, version=f"RestrictedPython {version('RestrictedPython')}",
                     details=(("path", str(found)),))

    def accept(self, ctx: RunContext, job: Job) -> None:
        if job.kind == "module":
            raise DetainError("the restricted backend runs only -c snippets and single scripts, "
                              "not -m modules; pick another backend")

    def launch(self, ctx: RunContext) -> Launch:
        if ctx.deps:
            raise DetainError("the restricted backend cannot use --with/--requirements: "
                              "RestrictedPython allows only a few stdlib imports")
        found = package_dir()
        if found is None:
            raise DetainError(self.probe().reason)
        self.plan_hiding(ctx)
        staged = ctx.setup.prepare_stage(ctx.run.path, [found])
        lib = ctx.run.subdir("guestlib", 0o755)
        (lib / found.name).symlink_to(ctx.setup.remap(str(found), staged))
        ctx.launcher_options += ["--path", str(lib), "--restricted"]
        return super().launch(ctx)

    def host_assurance(self, ctx: RunContext, seen: dict) -> dict:
        return {**super().host_assurance(ctx, seen),
                "restricted_python": "compiled by RestrictedPython inside the sandbox "
                                     "(language-level guards, not an isolation boundary)"}


BACKEND = RestrictedBackend()
