"""Shared by the report tests: the suspicious fixture and where each of its deeds is."""

from __future__ import annotations

from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "suspicious"
PAYLOAD = FIXTURE / "payload.py"

# marker -> (event name, category) the audit hook must report on that line
EXPECTED = {
    "ssh": ("open", "file-read"),
    "resolve": ("socket.getaddrinfo", "network"),
    "connect": ("socket.connect", "network"),
    "shell": ("subprocess.Popen", "process"),
    "write": ("open", "file-write"),
    "exec": ("compile", "code"),
    "native": ("ctypes.dlopen", "native"),
}


# Backends whose job cannot create a socket at all (no network namespace of their own, so
# seccomp denies socket()): the connect on that line never happens, so it has no event.
NO_SOCKETS = ("landlock",)


def expected(backend: str) -> dict[str, tuple[str, str]]:
    """The deeds the payload really does on `backend`."""
    if backend in NO_SOCKETS:
        return {k: v for k, v in EXPECTED.items() if k != "connect"}
    return EXPECTED


def marker_lines() -> dict[str, int]:
    lines = {}
    for number, text in enumerate(PAYLOAD.read_text().splitlines(), 1):
        if "# @" in text:
            lines[text.rsplit("# @", 1)[1].strip()] = number
    return lines
