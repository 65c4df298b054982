"""The scale-out service: an API and two Celery workers under different node names, a real
Redis broker and a real PostgreSQL store, each private to the test; the official judge0
client; and the faults: a worker killed mid-run, the API restarted, Redis restarted."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require
from service_servers import TOKEN, Postgres, Redis, Server

judge0 = pytest.importorskip("judge0", reason="the official judge0 client (make test installs it)")
pytest.importorskip("celery", reason="the service extra (make test installs it)")
REDELIVER = "4"


class Cluster:
    def __init__(self, root: Path, state: Path, tokens: Path) -> None:
        self.redis = Redis(root / "redis")
        self.postgres = Postgres(root / "pg")
        self.state, self.tokens = state, tokens
        self.env = {**os.environ, "DETAIN_STATE_DIR": str(state)}
        self.common = ["--broker", self.redis.url, "--database", self.postgres.url,
                       "--tokens", str(tokens), "--redeliver-after", REDELIVER]
        self.api = Server(state, *self.common)
        self.workers = {name: self.worker(name) for name in ("alpha", "beta")}

    def worker(self, name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "detain", "worker", "--name", name,
                                 "--concurrency", "1", *self.common], env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def rows(self) -> list[dict]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.postgres.url)
        try:
            with engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(text(
                    "select token, state, worker, attempts from detain_submissions"))]
        finally:
            engine.dispose()

    def result(self, token: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        shown: dict = {}
        while time.monotonic() < deadline:
            status, shown = self.api.call("GET", f"/submissions/{token}?fields=*")
            if status == 200 and shown["status"]["id"] > 2:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"no result for {token}: {shown}")

    def close(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.api.proc.poll() is None:
            self.api.stop()
        self.redis.stop()
        self.postgres.stop()


@pytest.fixture
def cluster(state_dir, tmp_path):
    require("bwrap")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[tokens.grader]\nsha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"'
                      '\ntimeout = 20\nbackend = "bwrap"\n')
    tokens.chmod(0o600)
    root = Path(f"/var/tmp/detain-cluster-{os.getpid()}-{time.monotonic_ns()}")
    root.mkdir(mode=0o711)
    private = state_dir / f"cluster-{time.monotonic_ns()}"
    private.mkdir()
    made = Cluster(root, private, tokens)
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_serve_the_official_client(cluster):
    c = judge0.Client(cluster.api.url, {"X-Auth-Token": TOKEN})
    done = judge0.run(client=c, submissions=[
        judge0.Submission(source_code=f"import time\ntime.sleep(0.5)\nprint({n})")
        for n in range(6)])
    assert [s.stdout for s in done] == [f"{n}\n" for n in range(6)]
    assert {row["worker"] for row in cluster.rows()} == {"alpha", "beta"}
    status, health = cluster.api.call("GET", "/healthz", token=None)
    assert status == 200 and health["mode"] == "distributed"
    # A client that waits is answered when PostgreSQL announces the result (finished.py).
    status, shown = cluster.api.call("POST", "/submissions?wait=true",
                                     {"language_id": 71, "source_code": "print('waited')"})
    assert status == 201 and shown["stdout"] == "waited\n"


def test_results_are_announced_to_waiters(tmp_path):
    """A worker's finish wakes the API's waiter for that token through LISTEN/NOTIFY,
    one that comes after the announcement is answered at once, and nothing else wakes."""
    import asyncio

    from detain.service.finished import Finished
    from detain.service.store import Store

    root = Path(f"/var/tmp/detain-notify-{os.getpid()}-{time.monotonic_ns()}")
    root.mkdir(mode=0o711)
    postgres = Postgres(root / "pg")
    store = Store(postgres.url)
    finished = Finished(store.engine)
    try:
        deadline = time.monotonic() + 30
        while not finished.listening and time.monotonic() < deadline:
            time.sleep(0.05)
        for token in ("early", "late", "other"):
            store.add(token, "judge0", "someone", {"body": {}})

        async def waits() -> None:
            late, other = finished.expect("late"), finished.expect("other")
            await asyncio.to_thread(store.finish, "late", {"status_id": 3})
            await asyncio.wait_for(late, 20)
            assert not other.done()
            finished.forget("other", other)
            await asyncio.to_thread(store.finish, "early", {"status_id": 3})
            for _ in range(200):  # announced before anyone waits for it
                early = finished.expect("early")
                if early.done():
                    return
                finished.forget("early", early)
                await asyncio.sleep(0.1)
            raise AssertionError("a waiter after the announcement was not answered")
        asyncio.run(waits())
    finally:
        finished.close()
        store.close()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_worker_killed_mid_run_loses_nothing(cluster):
    status, answer = cluster.api.call("POST", "/submissions", {
        "language_id": 71, "source_code": "import time\ntime.sleep(3)\nprint('finished')"})
    assert status == 201
    token = answer["token"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = next(r for r in cluster.rows() if r["token"] == token)
        if row["state"] == "running":
            break
        time.sleep(0.1)
    victim = cluster.workers[row["worker"]]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    shown = cluster.result(token)
    assert shown["stdout"] == "finished\n" and shown["status"]["id"] == 3
    row = next(r for r in cluster.rows() if r["token"] == token)
    assert row["attempts"] == 2 and row["worker"] != victim.args[victim.args.index("--name") + 1]


def test_restarting_the_api_or_redis_loses_nothing(cluster):
    status, answer = cluster.api.call("POST", "/submissions", {
        "language_id": 71, "source_code": "import time\ntime.sleep(1)\nprint('one')"})
    assert status == 201
    assert cluster.api.stop() == 0
    cluster.api.start()
    assert cluster.result(answer["token"])["stdout"] == "one\n"
    cluster.redis.stop()
    status, second = cluster.api.call("POST", "/submissions", {
        "language_id": 71, "source_code": "print('two')"})
    assert status == 201  # stored; sent once the broker is back
    cluster.redis.start()
    assert cluster.result(second["token"])["stdout"] == "two\n"
