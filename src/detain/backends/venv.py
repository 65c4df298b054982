"""Level 0: a fresh throw-away virtual environment, and no isolation beyond `process`.

The job's requirements are installed into a new venv in the run's scratch dir (built even
when there are none, so the job never sees another environment's packages) and the job
runs under the hardened interpreter, exactly as on the `process` backend. Its value is
reproducible dependency isolation for trusted code, and the baseline row of the selftest
matrix. A venv is not a security boundary (the seeds' own caution): `auto` never picks it,
it needs `--min-level 0`, and every run says so on stderr.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from ..job import Job
from ..result import Result
from . import Probe
from .base import Started
from .process import ProcessBackend

WARNING = ("detain: warning: the venv backend isolates dependencies only; a venv is not a "
           "security boundary, so run only code you trust with it")


class VenvBackend(ProcessBackend):
    name = "venv"
    always_venv = True
    run_warning: str | None = WARNING  # printed at every run; selftest says it once instead

    def probe(self) -> Probe:
        return Probe(True, version=f"Python {platform.python_version()}")

    def finish(self, started: Started, job: Job, **sinks: Any) -> Result:
        if self.run_warning:
            print(self.run_warning, file=sys.stderr)
        result = super().finish(started, job, **sinks)
        result.notes.insert(0, WARNING.removeprefix("detain: warning: "))
        return result


BACKEND = VenvBackend()
