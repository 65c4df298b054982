"""Cost of the outside tracer (host/tracer.py): traced / untraced, side by side in one run.

Two jobs, alternating traced and untraced runs so machine noise hits both sides, median
of the runs:
  * `detain run -c pass` (the API's cold run, as the CLI does it);
  * the install phase of `detain package six==1.17.0` (pip inside the sandbox, from the
    wheel fetched once on the host): the phase the tracer slows down most. The whole
    command also fetches and scans on the host, untraced, so its own ratio is lower.
The goal is at most 1.5x on the package.

    python bench/trace_overhead.py [--backend bwrap] [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from detain.api import Sandbox
from detain.host.interpreter import find_interpreter
from detain.job import Job
from detain.package import phases
from detain.package.fetch import fetch
from detain.package.index import read_config
from detain.policy import Policy


def timed(action, traced: bool) -> float:
    started = time.perf_counter()
    action(traced)
    return time.perf_counter() - started


def compare(name: str, action, runs: int) -> None:
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for traced in (False, True):
            seconds[traced].append(timed(action, traced))
    plain, traced = (statistics.median(seconds[k]) for k in (False, True))
    print(f"{name:<34} untraced {plain:7.3f} s  traced {traced:7.3f} s  "
          f"ratio {traced / plain:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="bwrap")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = Policy().merge({"backend": args.backend, "min_level": 1}, "bench")
    policies = {False: base, True: replace(base, trace="syscalls")}

    def run_pass(traced: bool) -> None:
        result = Sandbox(policies[traced]).run(Job.code("pass"))
        assert result.ok, result.error

    compare("detain run -c pass", run_pass, args.runs * 2)
    config = read_config()
    with tempfile.TemporaryDirectory(prefix="detain-bench-") as tmp:
        fetched = Path(tmp) / "fetch"
        fetched.mkdir()
        artifact = fetch("six==1.17.0", fetched, config, find_interpreter(None).version)

        def install(traced: bool) -> None:
            with tempfile.TemporaryDirectory(prefix="detain-bench-", dir=tmp) as work:
                report = phases.install(artifact, policies[traced], config, Path(work))
                assert report["status"] == 0, report["output_tail"]

        compare("detain package six==1.17.0 install", install, args.runs)


if __name__ == "__main__":
    main()
