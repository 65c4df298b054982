"""Scale-out: Celery workers run what the API accepted; Redis carries the work, PostgreSQL the rows.

The API stores a row, then sends its token as a Celery task. A worker (`detain worker`)
runs it with executor.execute, the code the embedded server runs. Nothing accepted is lost:
  * the task is acknowledged late (after the result is stored) and rejected when its
    worker is lost, so a worker killed mid-run leaves the message unacknowledged and Redis
    hands it to another worker once `redeliver` seconds have passed;
  * the row is in PostgreSQL before the task is sent, and the API sends again any row
    still queued after `redeliver` seconds (a Redis restarted without its data, an API
    killed between storing and sending);
  * a row is finished once (store.finish): a run done twice stores the first result to
    finish, and the client sees exactly one.
Workers need the same `--tokens` and `--policy` as the API: a row is run under its
owner's ceiling as the worker reads it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from celery import Celery

from .callback import Network, check
from .embedded import POLL_MAX, poll
from .finished import FALLBACK, Finished
from .store import DONE, QUEUED, Store

TASK = "detain.run_submission"
REDELIVER = 120.0
BACKLOG_AGE = 0.5  # seconds a count of queued rows is used for the queue's cap


def celery_app(broker: str, redeliver: float = REDELIVER) -> Celery:
    app = Celery("detain", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_serializer="json", accept_content=["json"], task_ignore_result=True,
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        # kombu looks for unacknowledged messages past the visibility timeout on every
        # tenth restore tick: a tick each second finds a lost worker's task within ~10 s.
        broker_transport_options={"visibility_timeout": redeliver,
                                  "unacked_restore_interval": 1},
        worker_enable_remote_control=False)
    return app


class Distributed:
    """The API's dispatcher when scaled out: send, then read results from the store."""

    local = False  # workers elsewhere read the rows: each must be committed before it is sent

    def __init__(self, store: Store, broker: str, callbacks_allowed: tuple[Network, ...] = (),
                 redeliver: float = REDELIVER) -> None:
        self.store = store
        self.app = celery_app(broker, redeliver)
        self.callbacks_allowed = callbacks_allowed
        self.redeliver = redeliver
        self.finished = Finished(store.engine)
        self._counted = (-BACKLOG_AGE, 0)  # (when, rows queued then)
        self._stop = threading.Event()
        threading.Thread(target=self._resend, daemon=True, name="detain-resend").start()

    def accept(self, token: str, added: dict[str, Any] | None = None) -> None:
        """Send the row to a worker (which reads it from the store, not `added`)."""
        try:
            self.app.send_task(TASK, args=[token], retry=True, retry_policy={
                "max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                "interval_max": 1})
        except Exception:  # the broker is down: the row is stored, _resend sends it later
            pass

    def _resend(self) -> None:
        """Send again rows still queued `redeliver` seconds after they were accepted."""
        while not self._stop.wait(self.redeliver / 2):
            for token in self.store.stale(QUEUED, self.redeliver):
                self.accept(token)

    async def result(self, token: str) -> dict[str, Any] | None:
        """The row once done (None if deleted): read when PostgreSQL announces it
        (finished.py), and every FALLBACK seconds in case an announcement was lost; polled
        as the embedded server polls while nothing listens."""
        if not self.finished.listening:
            return await poll(self.store, token)
        while True:
            announced = self.finished.expect(token)
            try:
                step = FALLBACK if self.finished.listening else POLL_MAX
                await asyncio.wait([announced], timeout=step)
            finally:
                self.finished.forget(token, announced)
            record = await asyncio.to_thread(self.store.get, token)
            if record is None or record["state"] == DONE:
                return record

    def backlog(self) -> int:
        """Rows queued, counted at most every BACKLOG_AGE seconds: the queue's cap is a
        bound, not an exact count, and counting for every submission cost the API more
        than the rest of accepting it."""
        now = time.monotonic()
        if now - self._counted[0] > BACKLOG_AGE:
            self._counted = (now, self.store.counts().get(QUEUED, 0))
        return self._counted[1]

    def health(self) -> tuple[bool, dict[str, Any]]:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            counts = self.store.counts()
        except Exception as exc:
            return False, {"mode": "distributed", "error": f"{type(exc).__name__}: {exc}"[:200]}
        return True, {"mode": "distributed", "backlog": counts.get(QUEUED, 0)}

    def callback_refused(self, url: str) -> str | None:
        return check(url, self.callbacks_allowed)

    def close(self) -> None:
        self._stop.set()
        self.finished.close()


def run_worker(executor, broker: str, name: str | None, concurrency: int,
               redeliver: float = REDELIVER) -> None:
    """Consume tasks until stopped; each runs `executor.execute(token)` on a thread."""
    app = celery_app(broker, redeliver)

    @app.task(name=TASK)
    def run_submission(token: str) -> None:
        executor.execute(token)

    node = f"{name or 'detain'}@{socket.gethostname()}"
    app.Worker(hostname=node, pool="threads", concurrency=concurrency, loglevel="WARNING",
               without_heartbeat=False, without_mingle=True, without_gossip=True,
               quiet=True).start()
