"""The host side of the per-run channel: the job message in, the guest's status out.

In: one message on virtio port 1, read by guest_init.receive(): a 4-byte big-endian
length, a JSON header, then the blobs the header lists (name, length) in order. The boot
that saves a VM gets one such message too (`boot_message`): how to start the job's
process ahead of time. Each run's message carries, as its `launcher` blob, the waiting
launcher's own message (host/jobmessage.py, read by guest/launcher.py's `--job-from`).
Out: the guest init's one-line JSON status on its root-only port. It comes from a VM that
ran hostile code, so it is size-capped and every field is type-checked; anything odd is
treated as no status at all.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .image import GUEST_LAUNCHER

STATUS_CAP = 16 << 10
# The waiting launcher's fds inside the guest: the records channel and its job pipe.
CHANNEL_FD, JOB_FD = 3, 4


def encode(header: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    header = {**header, "blobs": [[name, len(data)] for name, data in blobs.items()]}
    encoded = json.dumps(header).encode()
    return b"".join([struct.pack(">I", len(encoded)), encoded, *blobs.values()])


def boot_message(python: str, flags: Sequence[str], uid: int, seccomp_filter: bytes,
                 trace: tuple[dict[str, Any], bytes] | None = None) -> bytes:
    """`trace`: how the guest init starts the outside tracer and the filter that stops the
    traced syscalls (microvm/trace.py), for a VM whose job process is traced."""
    argv = [python, *flags, GUEST_LAUNCHER, "--job-from", str(JOB_FD)]
    header: dict[str, Any] = {"argv": argv, "uid": uid, "channel_fd": CHANNEL_FD,
                              "job_fd": JOB_FD}
    blobs = {"seccomp": seccomp_filter}
    if trace is not None:
        header["trace"], blobs["trace_filter"] = trace
    return encode(header, blobs)


@dataclass(frozen=True)
class GuestStatus:
    """How the job ended, as the guest kernel saw it (read by init, not by the job)."""

    exit_code: int | None
    signal: int | None
    utime: float
    stime: float
    maxrss_kib: int
    oom_kills: int
    memory_peak: int | None
    pids_refused: int
    kernel: str | None
    error: str | None

    @property
    def returncode(self) -> int | None:
        if self.signal is not None:
            return -self.signal
        return self.exit_code


def _int(value: Any, low: int, high: int) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and \
        low <= value <= high else None


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and 0 <= value < 1e7 else 0.0


def parse_status(data: bytes) -> GuestStatus | None:
    line = data[:STATUS_CAP].split(b"\n", 1)[0]
    try:
        raw = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    error = raw.get("error")
    kernel = raw.get("kernel")
    return GuestStatus(
        exit_code=_int(raw.get("exit"), 0, 255), signal=_int(raw.get("signal"), 1, 64),
        utime=_seconds(raw.get("utime")), stime=_seconds(raw.get("stime")),
        maxrss_kib=_int(raw.get("maxrss_kib"), 0, 1 << 40) or 0,
        oom_kills=_int(raw.get("oom_kills"), 0, 1 << 31) or 0,
        memory_peak=_int(raw.get("memory_peak"), 0, 1 << 50),
        pids_refused=_int(raw.get("pids_refused"), 0, 1 << 31) or 0,
        kernel=kernel[:100] if isinstance(kernel, str) else None,
        error=error[:2000] if isinstance(error, str) else None)
