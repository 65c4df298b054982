"""The options `detain serve --http` and `detain worker` share: both must be given the same."""

from __future__ import annotations

import argparse
from pathlib import Path


def how_many(what: str, high: int = 64):
    """An argparse type: a whole number of `what` from 1 to `high`."""
    def parse(value: str) -> int:
        if not value.isdigit() or not 1 <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"expected a number of {what} from 1 to {high}, "
                                             f"got {value!r}")
        return int(value)
    return parse


def add_shared(group: argparse._ActionsContainer, *, worker: bool) -> None:
    """--tokens, --policy, --database, --broker and --redeliver-after; a worker needs the
    broker and the database, the API only when scaled out."""
    group.add_argument("--tokens", metavar="FILE", type=Path,
                       help="TOML file of client tokens, each with its policy ceiling")
    group.add_argument("--policy", metavar="FILE", type=Path,
                       help="the server's policy: the ceiling of every client")
    group.add_argument("--database", metavar="URL", required=worker,
                       help="SQLAlchemy URL of the store (default: SQLite in the state dir; "
                       "postgresql+psycopg://user@host/db when scaled out)")
    group.add_argument("--broker", metavar="URL", required=worker,
                       help="Celery broker (redis://host:6379/0): submissions run on "
                       "`detain worker`s")
    group.add_argument("--redeliver-after", metavar="SECONDS", type=float, default=120.0,
                       help="a submission whose worker vanished, or still queued, is sent "
                       "again after this long; keep it above the longest timeout (default 120)")
