"""`detain pytest [PATH] [-- PYTEST_ARGS]`: a project's test suite, run inside a sandbox.

What detain says about the suite is split by who could have written it. The exit status is
observed by the host; it is the job's, which pytest sets unless the suite ends the process
itself, so detain reports it as pytest's status and never as a verdict of its own. The
per-test list (ids, outcomes, which test caused which event) comes from a timeline that
the guest driver writes from inside the suite's own process, where any test can append to
it, forge or drop records: detain counts nothing from it into a line of its own, and
shows it only labelled as reported by the job, unverified. Every line goes through
`safe_text.say`, so a test id cannot drive the terminal or start a forged line.
"""

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
        "installed inside. Each behaviour event names the test that was running (as the "
        "suite's own, unverified timeline tells). The exit status is pytest's.",
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
    from ..report.safe_text import say
    from ..testsuite import run_suite
    from .run_cmd import (
        EXIT_FAIL_ON,
        _report,
        _reporting,
        _stream,
        _write_json,
        policy_from_args,
    )

    path, pytest_args = split_rest(args.rest)
    reporting = _reporting(args)
    scan = None
    if reporting:
        from ..scan import scan as static_scan

        scan = static_scan(path)
    from ..host.tracer import on_by_default

    result = run_suite(path, pytest_args, on_by_default(policy_from_args(args, path)),
                       stdout=_stream(sys.stdout.buffer), stderr=_stream(sys.stderr.buffer))
    if args.json:
        _write_json(args.json, result.to_dict())
    met = _report(args, result, scan) if reporting else []
    for line in summary_lines(result):
        say(line)
    if not args.summary:  # with it, the verdict ends the summary already
        from ..report.verdict import line_for

        say(line_for(result, scan))
    if met and result.status == 0:
        say(f"--fail-on {', '.join(met)}: seen in this run")
        return EXIT_FAIL_ON
    return result.status


def summary_lines(result) -> list[str]:
    """detain's lines about a finished suite: the host-observed status, then what the job's
    timeline claims, labelled as such."""
    from .run_cmd import outcome_lines

    lines = outcome_lines(result)
    if result.error:
        return lines
    if not (result.timed_out or result.limit):  # else pytest did not exit: it was ended
        lines.insert(0, f"pytest exited with status {result.status} on {result.backend}")
    tests = result.behaviour.get("tests", [])
    if tests:
        counts: dict[str, int] = {}
        for test in tests:
            counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
        noisy = sorted(((t["events"], t["nodeid"]) for t in tests if t["events"]), reverse=True)
        told = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        lines.append(f"reported by the job (unverified, written inside the sandbox): "
                     f"{len(tests)} test record(s) ({told})"
                     + (f"; most events: {noisy[0][1]} ({noisy[0][0]})" if noisy else ""))
    return lines
