"""`detain worker`: run the submissions a scaled-out `detain serve --http` accepted."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker", help="run submissions for `detain serve --http --broker …` (scale-out)",
        description="Take submissions from the broker and run each in a sandbox, storing "
        "the result in the database. Start as many as you like, on any machines, with the "
        "API's own --tokens and --policy (a submission runs under its owner's ceiling). "
        "Needs `pip install 'detain[service]'`.")
    parser.add_argument("--broker", metavar="URL", required=True,
                        help="the Celery broker the API sends to, e.g. redis://host:6379/0")
    parser.add_argument("--database", metavar="URL", required=True,
                        help="the API's store, e.g. postgresql+psycopg://user@host/db")
    parser.add_argument("--name", metavar="NODE",
                        help="this worker's node name (default: detain@HOSTNAME)")
    parser.add_argument("--tokens", metavar="FILE", type=Path,
                        help="the API's tokens file (each token's ceiling)")
    parser.add_argument("--policy", metavar="FILE", type=Path,
                        help="the API's policy: the ceiling of every client")
    parser.add_argument("--concurrency", metavar="N", type=int, default=2,
                        help="submissions this worker runs at once (default 2)")
    parser.add_argument("--redeliver-after", metavar="SECONDS", type=float, default=120.0,
                        help="a task whose worker vanished goes to another after this long; "
                        "give the API the same value (default 120)")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    from ..service.server import service_parts

    parts = service_parts(args.tokens, args.policy, args.database)
    from ..service.executor import Executor
    from ..service.worker import run_worker

    executor = Executor(parts.store, parts.tokens, workers=args.concurrency,
                        name=args.name or "detain")
    try:
        run_worker(executor, args.broker, args.name, args.concurrency, args.redeliver_after)
    finally:
        executor.close()
        parts.store.close()
    return 0
