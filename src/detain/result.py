"""What a run did, in one schema for every backend."""

from __future__ import annotations

import signal as _signal
from dataclasses import asdict, dataclass, field

from .errors import EXIT_DETAIN_ERROR

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

EXIT_TIMEOUT = 124
EXIT_LIMIT = 137
EXIT_COPY_OUT = 4  # the job succeeded, but copy-out could not bring back all it left


@dataclass
class Result:
    """The outcome of one sandboxed run.

    `assurance` holds protections *observed* in force (read inside the sandbox before the
    job started, and on the host), never merely the ones requested.
    """

    backend: str
    level: int
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    limit: str | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    # Of wall_seconds, the time the launcher spent installing the job's requirements.
    install_seconds: float | None = None
    peak_memory_bytes: int = 0
    assurance: dict[str, Any] = field(default_factory=dict)
    copied_out: list[str] = field(default_factory=list)
    behaviour: dict[str, Any] = field(default_factory=dict)  # report/events.py: collect()
    notes: list[str] = field(default_factory=list)
    # A raw kernel-side trace when the policy asks for one (gVisor's strace lines): seen by
    # the sandbox's kernel, not the job, so trustworthy; parsed by the behaviour report.
    trace: str | None = None
    error: str | None = None
    # Why --copy-out brought back less than the job left (a cap, depth, an unwritable
    # destination); links and special files skipped by rule are only notes.
    copy_out_error: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    # Which backend ran and why (`auto`'s rule, backends/auto.py), with its expected cost.
    backend_choice: dict[str, Any] | None = None

    @property
    def status(self) -> int:
        """The exit status the CLI returns: the code's own, or 124 / 137 / 128+signal / 2,
        or 4 when the job succeeded but its copy-out is incomplete."""
        if self.error is not None:
            return EXIT_DETAIN_ERROR
        own = self._job_status()
        return EXIT_COPY_OUT if own == 0 and self.copy_out_error is not None else own

    def _job_status(self) -> int:
        if self.timed_out:
            return EXIT_TIMEOUT
        if self.limit is not None:
            return EXIT_LIMIT
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else EXIT_DETAIN_ERROR

    @property
    def ok(self) -> bool:
        return self.status == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for stream in ("stdout", "stderr"):
            data[stream] = self.__dict__[stream].decode("utf-8", "backslashreplace")
        data["status"] = self.status
        data["signal_name"] = _signal_name(self.signal)
        return data


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
