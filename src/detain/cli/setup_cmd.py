"""`detain setup BACKEND`: prepare what a backend needs before its first run."""

from __future__ import annotations

import argparse
import json
import sys

SETUPS = ("microvm",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup", help="prepare a backend (microvm: kernel, guest image, saved VM)",
        description="Fetch and build what a backend needs, cached and reused; running it "
        "again is cheap and re-verifies. microvm: fetches Debian's cloud kernel, builds the "
        "guest image around this interpreter, boots it once, saves the VM state and checks "
        "that a job runs.")
    parser.add_argument("backend", choices=SETUPS)
    parser.add_argument("--python", metavar="PATH", help="interpreter to put in the guest "
                        "(default: the base interpreter running detain)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..microvm.setup import setup

    console = Console(stderr=True)
    with console.status("preparing the microvm backend…") as status:
        def progress(message: str) -> None:
            status.update(message)
            console.log(message)

        outcome = setup(progress=progress, python=args.python)
    if args.json:
        print(json.dumps(outcome, indent=2, default=str))
    else:
        print("microvm ready: " + ", ".join(f"{k} {v}" for k, v in outcome.items()
                                              if isinstance(v, (str, int, float))),
              file=sys.stdout)
    return 0
