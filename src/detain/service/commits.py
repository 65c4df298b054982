"""Group commit for the SQLite store: many threads' writes, one transaction and one fsync.

Each accepted submission is written three times (accepted, running, done), each write a
durable commit, and SQLite has one writer at a time. Committed one by one, the writers
queued behind each other's fsync: under load the embedded server spent more time waiting
for the store than running sandboxes. Here one thread takes every write waiting at that
moment, runs them in one transaction and commits once; each caller gets its own result
after the commit, so a write that returned is as durable as before.

A write the caller need not wait on the disk for is `durable=False`: its caller has the
result as soon as its statement ran, and the commit follows. Writes commit in the order
they came, so a durable write's commit makes every earlier write durable too: marking a
row running needs no fsync of its own (a crash leaves it queued, and queued rows run
again), nor does accepting a submission whose client waits for the result (the result's
commit covers the acceptance before the client hears of either). So a batch of such
writes alone commits with `synchronous=NORMAL`: into the write-ahead log, without an
fsync (a killed process loses nothing of it, a power cut at most those writes); the next
durable batch, committed with `synchronous=FULL`, fsyncs the log and them with it. Before,
each submission's three commits cost three fsyncs one after another on the one writer, and
its result's commit waited behind the other two.

The writer keeps one connection for its life: taking one from SQLAlchemy's pool and
resetting it on return, for every batch, cost more CPU than the batch's statements.

A batch that fails is rolled back and its writes are retried one transaction each, so a
bad write fails alone and the others are not lost with it (a write that already answered
its caller is retried all the same; only a failure of its own goes unreported, which
takes a disk that fails every commit, the next durable write's included).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")
Write = Callable[[Connection], Any]
Item = tuple[Write, Future, bool]  # the write, its caller's answer, durable
BATCH_MAX = 64  # writes in one transaction: a burst still commits every few ms


class GroupCommit:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None  # the writer's own, opened on its thread
        self._synchronous = "FULL"  # as every new connection is set (store.py)
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # no write is queued behind the stop
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="detain-store-writer")
        self._thread.start()

    def __call__(self, write: Callable[[Connection], T], durable: bool = True) -> T:
        """Run `write` in a transaction shared with the writes waiting now; its result
        once that transaction is committed (or its statement has run, if not `durable`),
        or its exception."""
        future = self.submit(write, durable)
        return future.result() if future is not None else transaction(self._engine, write)

    def submit(self, write: Callable[[Connection], Any], durable: bool = True
               ) -> Future | None:
        """Queue `write` and return at once: the Future of its result (None once closed)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                return None
            self._queue.put((write, future, durable))
        return future

    def _serve(self) -> None:
        try:
            self._batches()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _batches(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = [first], False
            while len(batch) < BATCH_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[Item]) -> None:
        results = []
        try:
            conn = self._connection(any(durable for _, _, durable in batch))
            with conn.begin():
                for write, future, durable in batch:
                    results.append(write(conn))
                    if not durable and not future.done():
                        future.set_result(results[-1])
        except Exception as exc:
            self._drop()  # a connection that failed is not trusted with the next batch
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            for item in batch:
                self._commit([item])
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _connection(self, durable: bool) -> Connection:
        """The writer's connection, its commits synced (FULL) or not (NORMAL) as asked."""
        if self._conn is None:
            self._conn = self._engine.connect()
            self._synchronous = "FULL"
        wanted = "FULL" if durable else "NORMAL"
        if wanted != self._synchronous:  # between transactions: a pragma of the connection
            self._conn.connection.driver_connection.execute(f"PRAGMA synchronous={wanted}")
            self._synchronous = wanted
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken: the pool discards it
                pass
            self._conn = None

    def close(self) -> None:
        """Commit what is waiting, then stop; later writes commit alone."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join()


def transaction(engine: Engine, write: Callable[[Connection], T]) -> T:
    """`write` in a transaction of its own (PostgreSQL's writes: it commits concurrently)."""
    with engine.begin() as conn:
        return write(conn)
