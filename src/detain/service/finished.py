"""Waking the API's waiting clients when a worker stores a result: PostgreSQL LISTEN/NOTIFY.

Scaled out, the API learns of a result only through the store. Polling it for each client
that waits (`wait=true`) cost a query every few tens of milliseconds per client: most of the
API's CPU, much of PostgreSQL's, and up to a poll step of latency per submission. A worker's
`store.finish` now sends `NOTIFY detain_done, '<token>'` in the transaction that stores the
result, so PostgreSQL delivers it exactly when the result is committed; one connection of
the API listens and wakes that token's waiters, which read the row once.

The tokens announced last are remembered (RECENT of them), so a waiter that comes after
its result was announced is answered at once: a waiter reads the store only once it is
announced, a single read per submission. A notification is only a hint all the same: a
waiter reads the store again every FALLBACK seconds, so a notification lost with a dropped
connection (PostgreSQL restarted, a network blip) delays a result, never loses it. While
nothing listens (the driver is not psycopg 3, or the connection is down and being
retried), waiters poll as before.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy.engine import Engine

CHANNEL = "detain_done"
FALLBACK = 1.0  # seconds between a listening waiter's own reads of the store
RETRY = 1.0  # seconds between attempts to listen again after the connection failed
RECENT = 8192  # announced tokens remembered for waiters that come after the announcement


class Finished:
    """Futures per token, resolved when PostgreSQL announces the token's result."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiters: dict[str, set[asyncio.Future]] = {}
        self._recent: dict[str, None] = {}  # oldest first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.listening = False
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            threading.Thread(target=self._listen, daemon=True, name="detain-listen").start()

    def expect(self, token: str) -> asyncio.Future:
        """A future set when `token` is announced (already set if it was, lately): made
        before the store is read, so an announcement meanwhile is not missed."""
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            if token in self._recent:
                future.set_result(None)
            else:
                self._waiters.setdefault(token, set()).add(future)
        return future

    def forget(self, token: str, future: asyncio.Future) -> None:
        with self._lock:
            waiting = self._waiters.get(token)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[token]

    def _wake(self, tokens: Any = None) -> None:
        """Resolve the futures of `tokens` (all of them when None) on their loops."""
        with self._lock:
            for token in tokens or ():
                self._recent[token] = None
            while len(self._recent) > RECENT:
                del self._recent[next(iter(self._recent))]
            keys = list(self._waiters) if tokens is None else \
                [t for t in tokens if t in self._waiters]
            futures = [f for key in keys for f in self._waiters.pop(key)]
        for future in futures:
            try:
                future.get_loop().call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # its loop has closed: nobody waits on it any more
                pass

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                pooled = self._engine.raw_connection()
                connection = pooled.driver_connection
                pooled.detach()  # the pool's connection settings, but kept out of the pool
                try:
                    connection.autocommit = True
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self._wake()  # results stored while nothing listened: read them now
                    while not self._stop.is_set():
                        for note in connection.notifies(timeout=FALLBACK):
                            self._wake((note.payload,))
                finally:
                    self.listening = False
                    connection.close()
            except TypeError:  # a psycopg before 3.2 (no notifies timeout): waiters poll
                return
            except Exception:  # PostgreSQL down or restarting: waiters poll meanwhile
                self._stop.wait(RETRY)

    def close(self) -> None:
        self._stop.set()
        self._wake()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
