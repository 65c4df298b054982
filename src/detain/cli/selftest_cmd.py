"""`detain selftest`: the escape battery, run against every backend this host can start."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "selftest", help="attack every available backend and print what got out",
        description="Run detain's attack probes (filesystem, network, processes, resources, "
        "privileges, Python) inside every backend that can run here, judge from the host "
        "whether each got out, and print the containment matrix. Exit status 1 when a "
        "backend of level 2 or more let anything out.")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="test only this backend (repeatable; default: all that run here)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    parser.add_argument("--workers", type=int, default=3, metavar="N",
                        help="probes run at once on one backend (default 3)")
    parser.add_argument("--warm", action="store_true",
                        help="attack runs forked by a warm Sandbox's zygote (bwrap as root, "
                        "landlock), as the Python API and `detain serve` make them")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    from ..errors import DetainError
    from ..selftest import resolve

    if not 1 <= args.workers <= 16:
        raise DetainError(f"--workers {args.workers}: expected 1 to 16")
    targets, unavailable = resolve(args.backend)
    if not targets:
        raise DetainError("no backend can run here: " + "; ".join(
            f"{name}: {why}" for name, why in unavailable.items()))
    if args.warm:
        from ..selftest.warm import WarmBackend

        for target in targets:
            target.backend = WarmBackend(target.backend)
    try:
        return _battery(args, targets, unavailable)
    finally:
        for target in targets if args.warm else ():
            target.backend.close()
            print(f"{target.name}: {target.backend.forked} run(s) forked by a zygote",
                  file=sys.stderr)


def _battery(args: argparse.Namespace, targets, unavailable: dict[str, str]) -> int:
    from ..errors import DetainError
    from ..selftest import PROBES, report, run_battery

    if args.json:
        reports = run_battery(targets, workers=args.workers)
    else:
        reports = _with_progress(targets, args.workers, len(PROBES))
    if args.junit:
        try:
            with open(args.junit, "w", encoding="utf-8") as handle:
                handle.write(report.to_junit(reports))
        except OSError as exc:
            raise DetainError(f"--junit {args.junit}: cannot write ({exc.strerror})") from None
    if args.json:
        print(json.dumps(report.to_dict(reports, unavailable), indent=2))
    else:
        _print(reports, unavailable)
    return 1 if report.failed(reports) else 0


def _with_progress(targets, workers: int, per_target: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..selftest import run_battery

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), transient=True) as progress:
        task = progress.add_task("selftest", total=per_target * len(targets), last="")

        def advance(target, probe, verdict) -> None:
            progress.update(task, advance=1, description=f"selftest {target.name}",
                            last=f"{probe.id}: {verdict.status}")
        return run_battery(targets, workers=workers, on_verdict=advance)


def _print(reports, unavailable: dict[str, str]) -> None:
    from rich.console import Console

    from ..selftest import render, report

    # Piped or redirected, Rich would assume 80 columns and cut every probe name short.
    console = Console() if sys.stdout.isatty() else Console(width=44 + 13 * len(reports))
    console.print(render.matrix(reports))
    for line in render.escapes(reports):
        console.print(line, markup=False, highlight=False)
    for name, why in unavailable.items():
        console.print(f"[dim]{name}: not tested ({why})[/]")
    bad = report.failed(reports)
    if bad:
        console.print(f"[bold red]escapes on level >= 2: {', '.join(bad)}[/]")
    else:
        console.print("[green]no escapes on any level >= 2 backend[/]")
    sys.stdout.flush()
