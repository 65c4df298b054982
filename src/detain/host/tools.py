"""What the host tools backends drive (bwrap, runsc, podman, qemu) say about themselves.

Backends probe on every `detain run` with `auto`, and spawning `TOOL --version` costs more
than the rest of a probe; the answer cannot change while the binary does not, so it is
kept per binary identity in the user's cache (host/probe_cache.py says how, and when that
cache is not trusted).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .probe_cache import cached_answer


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "detain"


def tool_version(path: str, pattern: str = r"(\d+(?:\.\d+)+)",
                 env: dict[str, str] | None = None) -> str | None:
    """The first group of `pattern` in `path --version`'s output, or None."""
    match = re.search(pattern, tool_output([path, "--version"], env))
    return match.group(1) if match else None


def tool_output(argv: list[str], env: dict[str, str] | None = None) -> str:
    """What `argv` (a binary and a question to it) prints, stdout then stderr, or "" when
    it cannot run; cached on disk per binary, kernel and euid (host/probe_cache.py)."""
    def ask() -> str | None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True,
                                  env=env if env is not None else {}, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout + done.stderr

    return cached_answer(argv[0], " ".join(argv[1:]), ask, str(cache_dir())) or ""
