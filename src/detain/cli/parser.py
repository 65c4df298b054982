"""The `detain` argument parser: one module per sub-command, each with `register`."""

from __future__ import annotations

import argparse
import importlib

from .. import __version__
from ..errors import EXIT_DETAIN_ERROR

COMMANDS = ("run", "doctor", "setup", "selftest", "scan", "package", "pytest", "serve",
            "worker")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_DETAIN_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `command` (a COMMANDS name) the one sub-command alone.

    Parsing `detain run ...` needs only the run sub-parser, and building every other one
    (importing its module) is a third of a cold run's own start-up. Anything else (no
    command, an option first, a misspelt command) gets every sub-command, so `detain
    --help` and "invalid choice" list them all."""
    parser = OneLineParser(
        prog="detain",
        description="Run untrusted Python in a disposable sandbox and see what it did.")
    parser.add_argument("--version", action="version", version=f"detain {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=OneLineParser)
    for name in (command,) if command in COMMANDS else COMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}_cmd":
                continue
            raise
        module.register(subparsers)
    return parser
