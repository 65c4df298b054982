"""Cost of the launcher's audit hook (guest/audit.py) on a CPU-bound and an import-heavy job.

Each job runs in a fresh `python -I -S` process twice per round, once bare and once with
the hook installed exactly as the launcher installs it (events written to /dev/null), in
alternating order so machine noise hits both sides. The job's own CPU time is measured
inside the process (start-up is the same for both and would dilute the ratio; CPU time,
because other work on a shared machine makes wall time too noisy), and the minimum of the
runs is compared (the least-disturbed run of each);
no sandbox: this isolates the hook. Installing it costs about a millisecond, once.

    python bench/audit_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

GUEST = Path(__file__).resolve().parent.parent / "src" / "detain" / "guest"
CPU_BOUND = """
total = 0
for i in range(3_000_000):
    total += i * i % 7
"""
IMPORT_HEAVY = """
import asyncio, email.mime.multipart, http.server, json, logging.handlers, xml.dom.minidom
import argparse, csv, decimal, difflib, fractions, ftplib, gettext, imaplib, inspect
import mailbox, pathlib, pickle, pydoc, sqlite3, statistics, tarfile, tomllib, unittest
import urllib.request, uuid, zipfile, zoneinfo, dataclasses, typing, concurrent.futures
"""
HARNESS = """
import importlib.util, resource, sys
if sys.argv[1] == "audit":
    spec = importlib.util.spec_from_file_location("audit", {audit!r})
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    sys.path.insert(0, {guest!r})
    from launch import to_json
    del sys.path[0]
    audit.install(__import__("os").open("/dev/null", __import__("os").O_WRONLY), to_json,
                  "code", "-")
import time
started = time.process_time()
exec(compile(sys.argv[2], "<job>", "exec"))
print(time.process_time() - started)
"""


def timed(mode: str, job: str) -> float:
    harness = HARNESS.format(audit=str(GUEST / "audit.py"), guest=str(GUEST))
    out = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c", harness, mode,
                          job], check=True, capture_output=True, text=True).stdout
    return float(out)


def measure(job: str, runs: int) -> dict[str, float]:
    timed("bare", job), timed("audit", job)  # warm caches (.pyc, page cache)
    bare, audit = [], []
    for index in range(runs):
        order = ("bare", "audit") if index % 2 == 0 else ("audit", "bare")
        for mode in order:
            (bare if mode == "bare" else audit).append(timed(mode, job))
    b, a = min(bare), min(audit)
    return {"bare_ms": b * 1000, "audit_ms": a * 1000, "overhead_pct": (a / b - 1) * 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(f"{'job':<14}{'bare ms':>10}{'audit ms':>10}{'overhead':>10}")
    for name, job in (("cpu-bound", CPU_BOUND), ("import-heavy", IMPORT_HEAVY)):
        row = measure(job, args.runs)
        print(f"{name:<14}{row['bare_ms']:>10.1f}{row['audit_ms']:>10.1f}"
              f"{row['overhead_pct']:>9.1f}%")


if __name__ == "__main__":
    main()
