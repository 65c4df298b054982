"""Where submissions and their results live: SQLite by default, PostgreSQL when scaled out.

One table, through SQLAlchemy Core, so that the embedded server (a SQLite file in the
state dir) and the distributed one (`--database postgresql://…`) share every query. A row
is written when a submission is accepted, before anything runs, and again when its result
is known: a server restarted in between finds the row still queued and runs it again, so an
accepted submission is never lost. Each row keeps its owner (the name of the token that
sent it): a token reads and deletes only its own submissions.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

QUEUED, RUNNING, DONE = "queued", "running", "done"
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"  # sorts as it reads
metadata = MetaData()
submissions = Table(
    "detain_submissions", metadata,
    Column("token", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # "judge0" or "run" (detain's own API)
    Column("owner", String(128), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker", String(128)),
    Column("created_at", String(32), nullable=False),
    Column("finished_at", String(32)),
    Column("request", Text, nullable=False),
    Column("response", Text),
)


def now() -> str:
    """Judge0's timestamp format (the official client parses exactly this)."""
    return datetime.now(UTC).strftime(STAMP)


class Store:
    def __init__(self, url: str) -> None:
        options: dict[str, Any] = {}
        if url.startswith("sqlite"):
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
            _private_file(url.partition(":///")[2])
        self.engine: Engine = create_engine(url, **options)
        self._sqlite_lock = threading.Lock() if url.startswith("sqlite") else None
        metadata.create_all(self.engine)

    def add(self, token: str, kind: str, owner: str, request: dict[str, Any]) -> str:
        created = now()
        with self._write() as conn:
            conn.execute(insert(submissions).values(
                token=token, kind=kind, owner=owner, state=QUEUED, attempts=0,
                created_at=created, request=json.dumps(request)))
        return created

    def start(self, token: str, worker: str) -> dict[str, Any] | None:
        """Mark a queued (or retried) row running; None if it is gone or already done."""
        with self._write() as conn:
            changed = conn.execute(
                update(submissions).where(submissions.c.token == token,
                                          submissions.c.state != DONE)
                .values(state=RUNNING, worker=worker,
                        attempts=submissions.c.attempts + 1)).rowcount
        return self.get(token) if changed else None

    def finish(self, token: str, response: dict[str, Any]) -> bool:
        """Store the result once: a second finish (a retried run) changes nothing."""
        with self._write() as conn:
            return bool(conn.execute(
                update(submissions).where(submissions.c.token == token,
                                          submissions.c.state != DONE)
                .values(state=DONE, finished_at=now(), response=json.dumps(response))).rowcount)

    def get(self, token: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(submissions).where(submissions.c.token == token)).first()
        return None if row is None else _record(row._mapping)

    def many(self, tokens: list[str]) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(submissions).where(submissions.c.token.in_(tokens)))
            return {row.token: _record(row._mapping) for row in rows}

    def delete(self, token: str) -> bool:
        with self._write() as conn:
            return bool(conn.execute(delete(submissions).where(
                submissions.c.token == token)).rowcount)

    def unfinished(self, kind: str | None = None) -> list[str]:
        """Rows accepted but without a result (a server that stopped or died): run again."""
        query = select(submissions.c.token).where(submissions.c.state != DONE)
        if kind is not None:
            query = query.where(submissions.c.kind == kind)
        with self.engine.connect() as conn:
            return [row.token for row in conn.execute(query.order_by(submissions.c.created_at))]

    def stale(self, state: str, seconds: float) -> list[str]:
        """Rows in `state` accepted more than `seconds` ago."""
        cutoff = (datetime.now(UTC) - timedelta(seconds=seconds)).strftime(STAMP)
        query = select(submissions.c.token).where(submissions.c.state == state,
                                                  submissions.c.created_at < cutoff)
        with self.engine.connect() as conn:
            return [row.token for row in conn.execute(query)]

    def waiting(self, owner: str) -> int:
        """How many of `owner`'s submissions are queued or running."""
        query = select(func.count()).select_from(submissions).where(
            submissions.c.owner == owner, submissions.c.state != DONE)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def forget(self, seconds: float) -> int:
        """Delete results finished more than `seconds` ago (the store is not an archive)."""
        cutoff = (datetime.now(UTC) - timedelta(seconds=seconds)).strftime(STAMP)
        with self._write() as conn:
            return conn.execute(delete(submissions).where(
                submissions.c.state == DONE, submissions.c.finished_at < cutoff)).rowcount

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(submissions.c.state))
            found: dict[str, int] = {}
            for row in rows:
                found[row.state] = found.get(row.state, 0) + 1
            return found

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction; SQLite's writers are serialised here, not by busy retries."""
        with self._sqlite_lock or nullcontext(), self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()


def _private_file(path: str) -> None:
    """The SQLite file (every tenant's code and output) readable by this user alone; SQLite
    gives its journal the same mode."""
    if not path or path == ":memory:":
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _record(row: Any) -> dict[str, Any]:
    record = {"token": row["token"], "kind": row["kind"], "owner": row["owner"],
              "state": row["state"], "attempts": row["attempts"], "worker": row["worker"],
              "created_at": row["created_at"], "finished_at": row["finished_at"]}
    record["request"] = json.loads(row["request"])
    record["response"] = json.loads(row["response"]) if row["response"] else None
    return record

