"""Running what the service accepted: a submission's row in, its result row out.

The same `execute(token)` runs in the embedded server's thread pool and in a Celery
worker (service/worker.py): it reads the row, rebuilds the job and policy from the stored
request under its owner's *current* ceiling (a token revoked meanwhile runs nothing),
runs it on a warm sandbox, and stores the result once. Running a row twice (a worker
killed mid-run, the task redelivered) stores the first result to finish; the client sees
exactly one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..errors import DetainError
from ..pool import SandboxPool
from . import callback, judge0, runs
from .store import Store
from .tokens import Tokens


class Metrics:
    """What /metrics shows, in Prometheus' text format (prometheus_client)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.finished = Counter("detain_submissions_finished", "Submissions run to a result",
                                ["kind", "status"], registry=self.registry)
        self.accepted = Counter("detain_submissions_accepted", "Submissions accepted",
                                ["kind"], registry=self.registry)
        self.rejected = Counter("detain_requests_rejected", "Requests refused",
                                ["reason"], registry=self.registry)
        self.running = Gauge("detain_submissions_running", "Submissions running now",
                             registry=self.registry)
        self.queued = Gauge("detain_submissions_queued", "Accepted, waiting for a sandbox",
                            registry=self.registry)
        self.seconds = Histogram("detain_run_seconds", "Wall time of a run, start to result",
                                 registry=self.registry,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))


class Executor:
    def __init__(self, store: Store, tokens: Tokens, *, workers: int = 2,
                 name: str = "embedded", callbacks_allowed: tuple = (),
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.tokens = tokens
        self.name = name
        self.callbacks_allowed = callbacks_allowed
        self.metrics = metrics or Metrics()
        self.pool = SandboxPool(warm=workers)  # a spare ready for each run at once
        self._pool_lock = threading.Lock()
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="detain-service")
        self._kinds: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "judge0": self._judge0, "run": self._detain_run}

    def accept(self, token: str, added: dict[str, Any] | None = None) -> Future:
        """Run the stored row `token` on this process's pool; the future holds the row."""
        self.metrics.queued.inc()
        return self._threads.submit(self.execute, token, added)

    def execute(self, token: str, added: dict[str, Any] | None = None
                ) -> dict[str, Any] | None:
        """Run the row `token` and store its result. `added`: the row as this process has
        just stored it (embedded), which nothing else runs or deletes before it is done,
        so it is marked running without waiting for the store."""
        self.metrics.queued.dec()
        if added is not None:
            record = added
            self.store.mark_running(token, self.name)
        else:
            record = self.store.start(token, self.name)
        if record is None:  # deleted, or finished by another attempt
            return self.store.get(token)
        self.metrics.running.inc()
        began = time.monotonic()
        try:
            response = self._kinds[record["kind"]](record)
        except Exception as exc:  # a bug in detain must still give the client a result
            response = {"status_id": 13, "message": f"detain failed on this submission "
                                                    f"({type(exc).__name__}: {exc})"}
        finally:
            self.metrics.running.dec()
        self.metrics.seconds.observe(time.monotonic() - began)
        finished = self.store.finish(token, response)
        if finished is None:  # deleted, or finished by another attempt meanwhile
            return self.store.get(token)
        status = response.get("status_id", response.get("result", {}).get("status"))
        self.metrics.finished.labels(record["kind"], str(status)).inc()
        url = record["request"].get("callback_url")
        if url:
            self._call_back(url, finished)
        return finished

    def _ceiling(self, record: dict[str, Any]):
        caller = self.tokens.named(record["owner"])
        if caller is None:
            raise DetainError(f"the token {record['owner']!r} that sent this submission no "
                              "longer exists")
        return caller.ceiling

    def _sandbox(self, policy):
        with self._pool_lock:
            return self.pool.sandbox(policy)

    def _judge0(self, record: dict[str, Any]) -> dict[str, Any]:
        request = record["request"]
        try:
            submission = judge0.parse(request["body"], request["encoded"],
                                      self._ceiling(record))
            result = self._sandbox(submission.policy).run(submission.job)
        except (DetainError, judge0.Invalid) as exc:
            return {"status_id": 13, "message": str(exc)}
        return judge0.judge(result, submission.expected_output)

    def _detain_run(self, record: dict[str, Any]) -> dict[str, Any]:
        try:
            job, policy = runs.parse(record["request"]["body"], self._ceiling(record))
            result = self._sandbox(policy).run(job)
        except DetainError as exc:
            return {"status_id": 13, "error": str(exc)}
        return runs.response(result)

    def _call_back(self, url: str, record: dict[str, Any]) -> None:
        shown = judge0.view({**record["request"], **(record["response"] or {}),
                             "token": record["token"], "created_at": record["created_at"],
                             "finished_at": record["finished_at"]},
                            judge0.DEFAULT_FIELDS, encoded=True)
        threading.Thread(target=callback.deliver, args=(url, shown, self.callbacks_allowed),
                         daemon=True, name="detain-callback").start()

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        with self._pool_lock:
            self.pool.close()
