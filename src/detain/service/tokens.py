"""Who may submit, and the most each caller may get: tokens with a policy ceiling each.

The tokens file is the operator's (trusted, like `--policy`), TOML:

    [tokens.grader]
    sha256 = "9f86d0…"      # of the token; or `token = "…"` in a file only root reads
    timeout = 10            # any policy setting: this token's ceiling
    memory = "256M"
    network = { allow = ["pypi.org:443"] }
    rate = 20               # requests per second, a batch counting each of its items
    queue = 64              # submissions waiting or running at once (default 64)

A client sends its token in `X-Auth-Token` (Judge0's header). Its ceiling is the server's
policy with the token's settings applied; a submission may only tighten it (judge0.py).
Without a tokens file every request is the anonymous caller's, with the server's own
policy as the ceiling, and the server listens on loopback only (cli/serve_cmd.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DetainError
from ..policy import Policy, PolicyError, load_toml

ANONYMOUS = "anonymous"
DEFAULT_RATE = 50.0
DEFAULT_QUEUE = 64


@dataclass(frozen=True)
class Caller:
    name: str
    ceiling: Policy
    rate: float
    queue: int = DEFAULT_QUEUE  # unfinished submissions at once: one caller never fills it


class Tokens:
    def __init__(self, base: Policy, path: Path | None = None,
                 anonymous_rate: float = DEFAULT_RATE) -> None:
        self.required = path is not None
        self.anonymous = Caller(ANONYMOUS, base, anonymous_rate)
        self._digests: dict[bytes, Caller] = {}
        if path is not None:
            self._load(base, path)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _load(self, base: Policy, path: Path) -> None:
        try:
            info = path.stat()
        except OSError as exc:
            raise DetainError(f"tokens file {path}: {exc.strerror}") from None
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise DetainError(f"tokens file {path}: must be yours and writable by you alone "
                              f"(chmod 600 {path})")
        table = load_toml(path).get("tokens")
        if not isinstance(table, dict) or not table:
            raise DetainError(f"tokens file {path}: expected [tokens.NAME] tables")
        for name, settings in table.items():
            if not isinstance(settings, dict):
                raise DetainError(f"tokens file {path}: [tokens.{name}] must be a table")
            settings = dict(settings)
            digest = _digest(settings, f"{path}: tokens.{name}")
            rate = _positive(settings.pop("rate", DEFAULT_RATE), f"{path}: tokens.{name}.rate")
            queue = _positive(settings.pop("queue", DEFAULT_QUEUE),
                              f"{path}: tokens.{name}.queue")
            try:
                ceiling = base.merge(settings, f"{path}: tokens.{name}")
            except PolicyError as exc:
                raise DetainError(str(exc)) from None
            self._digests[digest] = Caller(str(name), ceiling, float(rate), int(queue))

    def caller(self, token: str | None) -> Caller | None:
        """The caller a token names; None when it names none (or is needed and missing)."""
        if not self.required:
            return self.anonymous
        if not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        for known, caller in self._digests.items():
            if hmac.compare_digest(known, digest):
                return caller
        return None

    def named(self, name: str) -> Caller | None:
        """The caller by name: a stored submission is run again under its owner's ceiling."""
        if name == ANONYMOUS and not self.required:
            return self.anonymous
        return next((c for c in self._digests.values() if c.name == name), None)

    def stranger(self, address: str) -> Caller:
        """A client that gave no valid token, as a caller of its own for the rate limit:
        guessing tokens costs time."""
        return Caller(f"unauthenticated {address}", self.anonymous.ceiling, 5.0, 0)

    def admit(self, caller: Caller, cost: int = 1) -> bool:
        """A token bucket per caller: `rate` a second, bursts up to twice that."""
        with self._lock:
            moment = time.monotonic()
            level, last = self._buckets.get(caller.name, (caller.rate * 2, moment))
            level = min(caller.rate * 2, level + (moment - last) * caller.rate)
            if level < cost:
                self._buckets[caller.name] = (level, moment)
                return False
            self._buckets[caller.name] = (level - cost, moment)
            return True


def _positive(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value < 1e9:
        raise DetainError(f"{where}: expected a number above 0, got {value!r}")
    return value


def _digest(settings: dict, where: str) -> bytes:
    plain, hashed = settings.pop("token", None), settings.pop("sha256", None)
    if (plain is None) == (hashed is None):
        raise DetainError(f"{where}: give exactly one of token = \"…\" or sha256 = \"…\"")
    if plain is not None:
        if not isinstance(plain, str) or len(plain) < 16:
            raise DetainError(f"{where}.token: use a random token of at least 16 characters "
                              "(python3 -c 'import secrets; print(secrets.token_urlsafe())')")
        return hashlib.sha256(plain.encode()).digest()
    try:
        digest = bytes.fromhex(str(hashed))
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise DetainError(f"{where}.sha256: expected 64 hex digits (sha256sum of the token)")
    return digest
