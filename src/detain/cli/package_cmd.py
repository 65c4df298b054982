"""`detain package SPEC`: vet a dependency before you trust it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .run_cmd import add_policy_options

NOTABLE = ("network", "file-write", "process", "native", "code", "hook")
DEFAULT_TIMEOUT = "180"  # a phase's wall clock: an sdist build inside takes a while
EXIT_VERDICT = 3  # as `detain run --fail-on`: the run worked, what it showed fails the gate
FAIL_LEVELS = {"suspicious": "suspicious", "malicious": "malicious-looking"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "package", help="vet a package: install, import (and exercise) it in sandboxes",
        description="Fetch a package on the host (download only: nothing of it runs there), "
        "scan it statically, then install it, import every module and optionally exercise "
        "it, each in its own sandbox, and report what each phase did. Install may reach only "
        "the package index configured for pip; import and exercise have no network. Where "
        "the backend allows it (bwrap as root) every phase runs in a sinkhole network by "
        "default: whatever else it tries to reach is answered and recorded (--network none: "
        "off). The report ends with a verdict: clean, suspicious or malicious-looking, and "
        "its top reasons. Exit status 0 when every phase ran and the verdict is below "
        "--fail-on, 3 when the verdict is at or above it (credentials or keys read, egress "
        "attempted, a process other than the build's own, persistence writes: "
        "malicious-looking), else 1 when a phase failed, 2 for detain's own errors.",
        usage="detain package [OPTIONS] SPEC [--against SPEC]")
    parser.add_argument("spec", metavar="SPEC",
                        help="name==version, a wheel or sdist file, or a project directory")
    parser.add_argument("--against", metavar="SPEC", help="also vet SPEC (e.g. the previous "
                        "version) and show what is new in the first one")
    parser.add_argument("--exercise", action="store_true", help="also call every public "
                        "function that takes no required argument, each under a timeout")
    parser.add_argument("--import-timeout", metavar="SECONDS", type=float, default=10.0,
                        help="per module (and per call with --exercise); default 10")
    parser.add_argument("--json", metavar="PATH", help="write the package report as JSON "
                        "(- for stdout)")
    parser.add_argument("--report", metavar="FILE", action="append", default=[],
                        help="write FILE.json, FILE.sarif or FILE.html: every phase's events "
                        "in one report document with the static findings and the verdict "
                        "(repeatable)")
    parser.add_argument("--fail-on", choices=FAIL_LEVELS, default="malicious",
                        help=f"exit {EXIT_VERDICT} when the verdict is at least this: "
                        "suspicious, or malicious (malicious-looking; the default)")
    add_policy_options(parser)
    parser.set_defaults(handler=execute)


def sinkhole_counts(seen: dict[str, Any] | None) -> str:
    """What reached a phase's sinkhole, for its one-line header ("" without one)."""
    if not seen:
        return ""
    counts = [(seen["dns_queries"], "DNS query", "DNS queries"),
              (seen["tcp_connections"], "TCP connection", "TCP connections"),
              (seen["udp_datagrams"], "UDP datagram", "UDP datagrams")]
    reached = [f"{n} {one if n == 1 else many}" for n, one, many in counts if n]
    return f", sinkhole: {', '.join(reached) if reached else 'nothing reached it'}"


def execute(args: argparse.Namespace) -> int:
    from ..package.diff import diff
    from ..package.phases import vet
    from ..report.output import check_path, write_report
    from ..report.safe_text import say
    from .run_cmd import _write_json, policy_from_args

    for path in args.report:
        check_path(path)
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT
    policy = policy_from_args(args)

    def progress(text: str) -> None:
        say(text)
        sys.stderr.flush()

    sinkhole = {"none": False, "sinkhole": True}.get(args.network)  # None: where supported
    report = vet(args.spec, policy, exercise=args.exercise, seconds=args.import_timeout,
                 progress=progress, sinkhole=sinkhole)
    output: dict[str, Any] = report
    if args.against:
        older = vet(args.against, policy, exercise=args.exercise, seconds=args.import_timeout,
                    progress=progress, sinkhole=sinkhole)
        output = {"package": report, "against": older, "new_behaviour": diff(report, older)}
    if args.json:
        _write_json(args.json, output)
    for path in args.report:
        write_report(combined_report(report), path)
    if args.json != "-":
        render(report)
        if args.against:
            render_diff(args.spec, args.against, output["new_behaviour"])
    from ..report.verdict import LEVELS, line

    say(line(report["verdict"]))
    if LEVELS.index(report["verdict"]["level"]) >= LEVELS.index(FAIL_LEVELS[args.fail_on]):
        return EXIT_VERDICT
    failed = [p for p in report["phases"] if p["status"] != 0]
    return 1 if failed or len(report["phases"]) < 2 else 0


def combined_report(report: dict[str, Any]) -> dict[str, Any]:
    """The package's phases as one report document (schema.json), for --report."""
    from ..report.build import combine

    return combine([p["report"] for p in report["phases"]],
                   {"kind": "package", "target": report["spec"], "args": []},
                   report["verdict"])


def render(raw: dict[str, Any]) -> None:
    """A readable terminal summary: per phase, its status and notable behaviour.

    The report is full of the package's own strings (file names, event summaries, import
    errors, build output): the whole of it is made visible before anything is laid out.
    """
    from ..report.human import duration, more
    from ..report.safe_text import visible, visible_tree

    report = visible_tree(raw)
    out = sys.stdout
    fetched = report["fetch"]
    out.write(f"\n{report['spec']}: {fetched['kind']} {fetched['artifact']}"
              f"{' sha256 ' + fetched['sha256'][:16] + '…' if fetched['sha256'] else ''}"
              f" ({duration(report['seconds'])} in all)\n")
    findings = report["scan"].get("findings", [])
    out.write(f"  scan     {len(findings)} static finding(s)\n")
    for finding in findings[:15]:
        out.write(f"           [{finding.get('severity')}] {finding.get('file')}:"
                  f"{finding.get('line') or ''} {finding.get('title') or finding.get('id')}\n")
    if hidden := more(len(findings) - 15, "findings"):
        out.write(f"           {hidden}\n")
    for phase, raw_phase in zip(report["phases"], raw["phases"], strict=True):
        events = [e for e in phase["report"]["events"] if e["category"] in NOTABLE]
        state = "ok" if phase["status"] == 0 else f"FAILED (exit {phase['status']})"
        egress = phase.get("egress") or {}
        net = (f", network {egress.get('allowed', 0)} allowed / {egress.get('refused', 0)} "
               "refused" if egress else "" if phase.get("sinkhole") else ", no network")
        net += sinkhole_counts(phase.get("sinkhole"))
        out.write(f"  {phase['phase']:<8} {state} on {phase['backend']} in "
                  f"{duration(phase['seconds'])}{net}\n")
        choice = report.get("backend_choice") or {}
        if choice.get("reason") and phase is report["phases"][0]:
            out.write(f"           why {phase['backend']}: {choice['reason']}\n")
        if phase["error"]:
            out.write(f"           error: {phase['error']}\n")
        lines = list(dict.fromkeys(f"[{e['severity']}] {e['summary'][:140]} ({e['provenance']})"
                                   for e in events))  # repeats merged
        out.write("".join(f"           {line}\n" for line in lines[:25]))
        if hidden := more(len(lines) - 25, "events"):
            out.write(f"           {hidden}\n")
        failures = {k: v for k, v in (phase.get("outcome") or {}).get("modules", {}).items()
                    if v}
        for module, error in list(failures.items())[:10]:
            out.write(f"           import {module}: {error}\n")
        if phase["status"] != 0:
            tail = raw_phase["output_tail"][-800:].splitlines()
            out.write("".join(f"           {visible(line)}\n" for line in tail))


def render_diff(spec: str, against: str, new: dict[str, dict[str, list[str]]]) -> None:
    from ..report.safe_text import visible, visible_tree

    spec, against, new = visible(spec), visible(against), visible_tree(new)
    out = sys.stdout
    if not new:
        out.write(f"\nnothing new in {spec} compared with {against}\n")
        return
    out.write(f"\nnew in {spec} compared with {against}:\n")
    for phase, kinds in new.items():
        for kind, items in kinds.items():
            out.write(f"  {phase:<8} {kind}: {json.dumps(items[:20])}\n")
