"""Micro-VM start-up, in its two halves: a cold boot, and a run restored from the saved VM.

Cold boot is what `detain setup microvm` (or the first run with new interpreter flags or RAM
size) pays once: QEMU boots the guest kernel, the init starts the job's interpreter and it
waits; the VM is then saved (timed up to the guest's "ready", as `boot_and_save` reports it).
A run restores that saved VM and hands it the job: timed through the Python API from
`Sandbox.run()` to the job's first output byte, and to the end of the run.

    python bench/microvm.py [--runs N] [--boots N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import detain
from detain.backends import probe
from detain.host.interpreter import find_interpreter
from detain.microvm import machine
from detain.microvm import setup as vm


def cold_boots(runs: int) -> list[float]:
    policy = detain.Policy()
    prepared = vm.prepare(find_interpreter(policy.python), policy.limits.memory_bytes,
                          policy.interpreter_flags)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="detain-bench-") as tmp:
        for number in range(runs):
            state = Path(tmp) / f"boot-{number}.state"
            seconds.append(machine.boot_and_save(prepared.files, prepared.accel,
                                                 prepared.ram_mib, state, prepared.boot))
            state.unlink()
    return seconds


def restored_runs(runs: int) -> tuple[list[float], list[float]]:
    """(seconds to the first output byte, seconds to the end) of `print('x')` runs."""
    box = detain.Sandbox(detain.Policy().merge({"backend": "microvm", "min_level": 4}, "bench"))
    job = detain.Job.code("print('x')")
    box.run(job)  # the saved VM exists and the host's caches are warm, as for any later run
    first, total = [], []
    for _ in range(runs):
        seen: list[float] = []
        started = time.perf_counter()
        result = box.run(job, stdout=lambda _chunk, seen=seen: seen.append(time.perf_counter()))
        total.append(time.perf_counter() - started)
        if result.status != 0 or not seen:
            raise SystemExit(f"microvm: trivial job failed: {result.error or result.stderr!r}")
        first.append(seen[0] - started)
    return first, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--boots", type=int, default=3)
    args = parser.parse_args()
    found = probe("microvm")
    if not found.available:
        raise SystemExit(f"microvm skipped: {found.reason}")
    accel = dict(found.details).get("accel")
    boots = cold_boots(args.boots)
    first, total = restored_runs(args.runs)
    print(f"microvm ({accel}), medians in ms")
    print(f"  cold boot to waiting launcher  {statistics.median(boots) * 1e3:8.0f}"
          f"   ({args.boots} boots)")
    print(f"  restore + job, first output    {statistics.median(first) * 1e3:8.0f}"
          f"   ({args.runs} runs; target <= 300)")
    print(f"  restore + job, whole run       {statistics.median(total) * 1e3:8.0f}")


if __name__ == "__main__":
    main()
