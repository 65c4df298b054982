"""`detain scan PATH ...`: the static pre-scan alone. Nothing in PATH is imported or executed."""

from __future__ import annotations

import argparse
import os
import posixpath
from typing import Any

from .run_cmd import EXIT_FAIL_ON


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scan", help="statically scan files or directories (Bandit + detain's checks)",
        description="Malware triage without running anything: credential and persistence "
        "paths, environment harvesting, hard-coded IPs and drop points, decoded code run by "
        "exec, attribute indirection, setup.py cmdclass overrides, pyarmor, clipboard/"
        "screenshot/keylogger APIs, executables in files or literals, .pth files, and "
        "Bandit's findings worded for triage. Each finding has file:line and a severity.")
    parser.add_argument("paths", metavar="PATH", nargs="+", help="files or directories "
                        "(several, as pre-commit passes the changed files)")
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

    for path in args.report:
        check_path(path)
    report = scan_report(scan_paths(args.paths, use_bandit=not args.no_bandit))
    render_terminal(report)
    for path in args.report:
        write_report(report, path)
    met = fail_on(report, args.fail_on)
    if met:
        print(f"detain: --fail-on {', '.join(met)}: matched", flush=True)
        return EXIT_FAIL_ON
    return 0


def scan_paths(paths: list[str], *, use_bandit: bool) -> dict[str, Any]:
    """One scan of several paths, each finding naming its file as the path was given (a
    file: that path; a directory: the path joined with the file's name under it), so the
    files pre-commit passes from all over a repository stay apart in one report."""
    from ..scan import SEVERITY_ORDER, scan

    if len(paths) == 1:
        return scan(paths[0], use_bandit=use_bandit)
    parts = [scan(path, use_bandit=use_bandit,
                  display_name=path if os.path.isfile(path) else None) for path in paths]
    findings = []
    for path, part in zip(paths, parts, strict=True):
        for finding in part["findings"]:
            if not os.path.isfile(path):
                finding["file"] = posixpath.normpath(posixpath.join(path, finding["file"]))
            findings.append(finding)
    findings.sort(key=lambda f: (-SEVERITY_ORDER.get(f["severity"], 0), f["file"], f["line"]))
    for number, finding in enumerate(findings, 1):
        finding["ref"] = f"S{number}"
    return {"ran": True, "root": os.getcwd(), "files": sum(p["files"] for p in parts),
            "tools": parts[0]["tools"], "seconds": round(sum(p["seconds"] for p in parts), 3),
            "findings": findings, "errors": [e for p in parts for e in p["errors"]]}
