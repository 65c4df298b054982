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


def trusted_cache_dir() -> Path:
    """The cache dir, for what decides a run's protections (the seccomp filters runs load,
    the container profile, the rootfs skeleton): created 0700, and refused unless it is
    the euid's own, writable by nobody else, in a parent nobody else can swap it in (the
    euid's or root's, not writable by others unless sticky)."""
    import stat

    from ..errors import ProtectionError

    path = cache_dir()
    try:
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        info, parent = os.lstat(path), os.stat(path.parent)
    except OSError as exc:
        raise ProtectionError(f"detain's cache {path} cannot be used ({exc.strerror}); set "
                              "XDG_CACHE_HOME to a directory of yours") from None
    euid = os.geteuid()
    own = stat.S_ISDIR(info.st_mode) and info.st_uid == euid and not info.st_mode & 0o022
    parent_ok = parent.st_uid in (euid, 0) and (
        not parent.st_mode & 0o022 or parent.st_mode & stat.S_ISVTX)
    if not (own and parent_ok):
        raise ProtectionError(
            f"detain's cache {path} holds the seccomp filters runs load, so it must be a "
            f"directory of yours (uid {euid}) that nobody else can write or replace; fix "
            f"its owner and mode (chmod 700 {path}) or set XDG_CACHE_HOME elsewhere")
    return path


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
