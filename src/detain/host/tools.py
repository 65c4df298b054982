"""Versions of the host tools backends drive (bwrap, runsc, podman, qemu), cached on disk.

Backends probe on every `detain run` with `auto`, and spawning `TOOL --version` costs more
than the rest of a probe; the answer cannot change while the binary does not, so it is
kept per binary identity (path, size, mtime) in the user's cache.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "detain"


def tool_version(path: str, pattern: str = r"(\d+(?:\.\d+)+)",
                 env: dict[str, str] | None = None) -> str | None:
    """The first group of `pattern` in `path --version`'s output, or None."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    key = f"{path}:{info.st_size}:{info.st_mtime_ns}:{pattern}"
    cache = cache_dir() / "tool-versions.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True,
                              env=env if env is not None else {}, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(pattern, done.stdout + done.stderr)
    if match is None:
        return None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, key: match.group(1)}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return match.group(1)
