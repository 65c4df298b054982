"""`detain worker`: run the submissions a scaled-out `detain serve --http` accepted."""

from __future__ import annotations

import argparse

from .service_args import add_shared, how_many


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker", help="run submissions for `detain serve --http --broker …` (scale-out)",
        description="Take submissions from the broker and run each in a sandbox, storing "
        "the result in the database. Start as many as you like, on any machines, with the "
        "API's own --tokens and --policy (a submission runs under its owner's ceiling). "
        "Needs `pip install 'detain[service]'`.")
    add_shared(parser, worker=True)
    parser.add_argument("--name", metavar="NODE",
                        help="this worker's node name (default: detain@HOSTNAME)")
    parser.add_argument("--concurrency", metavar="N", type=how_many("runs at once"), default=2,
                        help="submissions this worker runs at once (default 2)")
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
