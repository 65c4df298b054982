"""The Python API; the CLI is a thin layer over it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import backends
from .errors import DetainError
from .job import Job
from .policy import Policy
from .result import Result

Sink = Callable[[bytes], None]


class Sandbox:
    """A policy bound to a backend; each `run` still gets a fresh, disposable sandbox.

    >>> box = Sandbox(Policy().merge({"timeout": 5}, "example"))
    >>> box.run(Job.code("print('hi')")).stdout
    b'hi\\n'
    """

    def __init__(self, policy: Policy | None = None, *, backend: str | None = None) -> None:
        self.policy = policy or Policy()
        if backend is not None:
            self.policy = self.policy.merge({"backend": backend}, "Sandbox(backend=...)")
        self.backend = backends.choose(self.policy.backend, self.policy.min_level,
                                       egress=bool(self.policy.allow_hosts))

    def run(self, job: Job, *, stdout: Sink | None = None, stderr: Sink | None = None) -> Result:
        """Run one job; `stdout`/`stderr` receive output live (already capped)."""
        return self.backend.run(job, self.policy, stdout=stdout, stderr=stderr)


def run(script: str | os.PathLike | None = None, *args: str, code: str | None = None,
        module: str | None = None, stdin: bytes | None = None, policy: Policy | None = None,
        **settings: Any) -> Result:
    """Run a script, a code string or a module in a sandbox and return its Result.

    `settings` use the policy-file vocabulary: `backend="bwrap"`, `timeout=5`,
    `memory="256M"`, `min_level=1`, `copy_out=["out:/tmp/results"]` and so on.
    """
    chosen = [x is not None for x in (script, code, module)]
    if sum(chosen) != 1:
        raise DetainError("pass exactly one of a script path, code= or module=")
    if script is not None:
        job = Job.script(script, *args, stdin=stdin)
    elif code is not None:
        job = Job.code(code, *args, stdin=stdin)
    else:
        job = Job.module(module, *args, stdin=stdin)
    base = policy or Policy()
    return Sandbox(base.merge(settings, "detain.run()") if settings else base).run(job)
