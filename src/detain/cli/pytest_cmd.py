"""`detain pytest [PATH] [-- PYTEST_ARGS]`: a project's test suite, run inside a sandbox."""

from __future__ import annotations

import argparse
import sys

from .run_cmd import add_policy_options, add_report_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pytest", help="run a project's pytest suite in a sandbox",
        description="Run a project's tests inside a sandbox: the project is shown read-only and "
        "copied into scratch, pytest and the project's requirements (requirements.txt, or "
        "--requirements/--with where available) are fetched as wheels on the host and "
        "installed inside. Each behaviour event names the test that was running. The exit "
        "status is pytest's.",
        usage="detain pytest [OPTIONS] [PATH] [-- PYTEST_ARGS ...]")
    parser.add_argument("--json", metavar="PATH", help="write the Result as JSON to PATH")
    add_report_options(parser)
    add_policy_options(parser)
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="PATH [-- PYTEST_ARGS]",
                        help="the project directory (default: .), then pytest's arguments")
    parser.set_defaults(handler=execute)


def split_rest(rest: list[str]) -> tuple[str, list[str]]:
    """PATH and pytest's arguments from what follows the options."""
    if "--" in rest:
        index = rest.index("--")
        before, after = rest[:index], rest[index + 1:]
    else:
        before, after = rest[:1], rest[1:]
    if len(before) > 1:
        from ..errors import DetainError

        raise DetainError(f"one project PATH expected before --, got {' '.join(before)}")
    return (before[0] if before else "."), after


def execute(args: argparse.Namespace) -> int:
    from ..testsuite import run_suite
    from .run_cmd import _report, _reporting, _stream, _write_json, policy_from_args

    path, pytest_args = split_rest(args.rest)
    reporting = _reporting(args)
    scan = None
    if reporting:
        from ..scan import scan as static_scan

        scan = static_scan(path)
    result = run_suite(path, pytest_args, policy_from_args(args, path),
                       stdout=_stream(sys.stdout.buffer), stderr=_stream(sys.stderr.buffer))
    if args.json:
        _write_json(args.json, result.to_dict())
    if reporting:
        _report(args, result, scan)
    tests = result.behaviour.get("tests", [])
    if tests:
        counts: dict[str, int] = {}
        for test in tests:
            counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
        noisy = sorted(((t["events"], t["nodeid"]) for t in tests if t["events"]), reverse=True)
        line = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        print(f"detain: {len(tests)} test(s) in the sandbox ({line}) on {result.backend}"
              + (f"; most events: {noisy[0][1]} ({noisy[0][0]})" if noisy else ""),
              file=sys.stderr)
    if result.error:
        print(f"detain: error: {result.error}", file=sys.stderr)
    return result.status
