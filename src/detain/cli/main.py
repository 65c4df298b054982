"""Entry point: parse, dispatch, and turn every user error into one line and exit 2.

Each sub-command lives in its own module with a cheap `register(subparsers)`; heavy
imports happen only inside the command that needs them, so `detain run` starts fast.
`detain run` goes through a running `detain serve` when there is one (cli/client.py),
before anything else is imported.
"""

from __future__ import annotations

import sys

from ..errors import EXIT_DETAIN_ERROR, EXIT_INTERRUPTED, DetainError

TYPE_CHECKING = False  # see detain/__init__.py
if TYPE_CHECKING:
    import argparse


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` removes what the run created."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`detain ARGV`; without `argv` (the program itself), a finished `detain run` ends the
    process here (`_quick_exit`)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from .client import run_through_server

        served = run_through_server(argv)
        if served is not None:
            return served
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        from .parser import build_parser

        parser = build_parser(argv[0] if argv else None)
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # before any sandbox exists: nothing to remove
        print("detain: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    code = dispatch(parser, args)
    if program and args.command == "run":
        _quick_exit(code)
    return code


def _quick_exit(code: int) -> None:
    """End the process without the interpreter's finalisation, which tears down every
    module one by one: about 7 ms of a cold `detain run`, for nothing, as the run and all
    it made are gone by now. Only when nothing is left for finalisation to do: no other
    thread, no atexit callback, the standard streams flushed; otherwise the ordinary exit."""
    import atexit
    import os
    import threading

    if threading.active_count() > 1 or getattr(atexit, "_ncallbacks", lambda: 1)():
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken stream: Python reports it
        return
    os._exit(code & 0xFF)


def dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the parsed command; every user error becomes one line and exit 2."""
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_DETAIN_ERROR
    try:
        return args.handler(args)
    except DetainError as exc:
        print(f"detain: error: {exc}", file=sys.stderr)
        return EXIT_DETAIN_ERROR
    except KeyboardInterrupt:
        print("detain: interrupted; the sandbox was removed", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
