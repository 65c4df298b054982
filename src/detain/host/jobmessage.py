"""The message a launcher started ahead of its job (`launcher.py --job-from`) waits for.

Shared by every sandbox that starts its launcher before the job is known: a warm spare on
the host backends, and the launcher saved inside a micro-VM.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from ..errors import DetainError


def launcher_message(argv: Sequence[str], env: Mapping[str, str]) -> bytes:
    """The launcher's arguments (from its channel on) and the job's environment, as
    `--job-from` reads them: length, then NUL-separated count, arguments, KEY=VALUE."""
    fields = [str(len(argv)), *argv, *(f"{key}={value}" for key, value in env.items())]
    if any("\0" in field for field in fields):
        raise DetainError("the job's arguments and environment cannot contain NUL bytes")
    data = "\0".join(fields).encode("utf-8", "surrogateescape")
    return struct.pack(">I", len(data)) + data
