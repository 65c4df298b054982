"""Entry point: parse, dispatch, and turn every user error into one line and exit 2.

Each sub-command lives in its own module with a cheap `register(subparsers)`; heavy
imports happen only inside the command that needs them, so `detain run` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from .. import __version__
from ..errors import DetainError
from ..result import EXIT_DETAIN_ERROR

COMMANDS = ("run", "doctor", "setup", "selftest", "scan", "package", "pytest")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_DETAIN_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="detain",
        description="Run untrusted Python in a disposable sandbox and see what it did.")
    parser.add_argument("--version", action="version", version=f"detain {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=OneLineParser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}_cmd":
                continue
            raise
        module.register(subparsers)
    return parser


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` removes what the run created."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
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
        return 130


if __name__ == "__main__":
    sys.exit(main())
