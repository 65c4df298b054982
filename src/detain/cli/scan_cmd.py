"""`detain scan PATH`: the static pre-scan alone. Nothing in PATH is imported or executed."""

from __future__ import annotations

import argparse

from .run_cmd import EXIT_FAIL_ON


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scan", help="statically scan a file or directory (Bandit + detain's checks)",
        description="Look for native binaries, .pth files, setup.py doing I/O, obfuscated "
        "code and Bandit's findings, without running anything.")
    parser.add_argument("path", metavar="PATH", help="a file or a directory")
    parser.add_argument("--report", metavar="FILE", action="append", default=[],
                        help="also write FILE.json, FILE.sarif or FILE.html (repeatable)")
    parser.add_argument("--fail-on", metavar="WHAT", action="append", default=[],
                        choices=("native", "high"),
                        help=f"exit {EXIT_FAIL_ON} when a native binary / high-severity "
                        "finding is found")
    parser.add_argument("--no-bandit", action="store_true", help="only detain's own checks")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    from ..report.build import fail_on, scan_report
    from ..report.output import check_path, write_report
    from ..report.terminal import render_terminal
    from ..scan import scan

    for path in args.report:
        check_path(path)
    report = scan_report(scan(args.path, use_bandit=not args.no_bandit))
    render_terminal(report)
    for path in args.report:
        write_report(report, path)
    met = fail_on(report, args.fail_on)
    if met:
        print(f"detain: --fail-on {', '.join(met)}: matched", flush=True)
        return EXIT_FAIL_ON
    return 0
