"""The embedded dispatcher: accepted submissions run in this process's pool of sandboxes.

Nothing else is needed: a SQLite file in the state dir holds the rows, a thread pool the
runs. A row left unfinished by a server that stopped or died is run again at start.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from .callback import Network, check
from .executor import Executor
from .store import DONE, Store


class Embedded:
    local = True  # runs go through this process's store writer (store.py)

    def __init__(self, executor: Executor, callbacks_allowed: tuple[Network, ...] = ()) -> None:
        self.executor = executor
        self.store: Store = executor.store
        self.callbacks_allowed = callbacks_allowed
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        for token in self.store.unfinished():
            self.accept(token)

    def accept(self, token: str, added: dict[str, Any] | None = None) -> None:
        future = self.executor.accept(token, added)
        with self._lock:
            self._futures[token] = future
        future.add_done_callback(lambda _: self._forget(token))

    def _forget(self, token: str) -> None:
        with self._lock:
            self._futures.pop(token, None)

    async def result(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            future = self._futures.get(token)
        if future is not None:
            record = await asyncio.wrap_future(future)  # the row as the run left it
            if record is not None and record["state"] == DONE:
                return record
        return await poll(self.store, token)

    def backlog(self) -> int:
        with self._lock:
            return len(self._futures)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"mode": "embedded", "backlog": self.backlog()}

    def callback_refused(self, url: str) -> str | None:
        return check(url, self.callbacks_allowed)

    def close(self) -> None:
        self.executor.close()


async def poll(store: Store, token: str, step: float = 0.02) -> dict[str, Any] | None:
    """The row once it is done (None if it was deleted), reading the store every `step`."""
    while True:
        record = await asyncio.to_thread(store.get, token)
        if record is None or record["state"] == DONE:
            return record
        await asyncio.sleep(step)
        step = min(step * 1.5, POLL_MAX)


POLL_MAX = 0.05  # seconds between reads of the store, at most
