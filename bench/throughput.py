"""Throughput and back-to-back latency of warm runs, as ratios to peers measured alongside.

For `print(6*7)`, with C callers (threads) each running jobs one after another for a fixed
time, counting the jobs finished per second:
  * bare: `python -I -S -c "print(6*7)"` in a subprocess (no isolation at all);
  * raw bwrap: the same under bwrap with every namespace unshared, /usr, the interpreter
    and /proc, /dev bound, as a careful user of bwrap alone would run it;
  * detain API warm: `Sandbox(warm=1).run` on bwrap and landlock, every run a fresh
    process with fresh confinement (a zygote's fork where it serves the policy).
Then, with one caller and no pause between runs, the median latency of each: the
warm API against the bare interpreter (back to back, so a spare must be ready in time).
Last, what relaying output costs: a job writing 8 MiB to stdout against `pass`, through
the warm API and through a pipe from the bare interpreter, in ms per MiB over bare.

    python bench/throughput.py [--seconds S] [--callers C] [--backend NAME ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import detain
from detain.backends import BACKENDS, probe
from detain.host.interpreter import find_interpreter

JOB = "print(6*7)"


def bare_command() -> list[str]:
    return [os.path.realpath(sys.executable), "-I", "-S", "-c", JOB]


def bwrap_command() -> list[str] | None:
    from detain.backends.bwrap import find_bwrap, root_dirs

    found = find_bwrap()
    if found is None or not probe("bwrap").available:
        return None
    args = [found[0], "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev"]
    for kind, source, path in root_dirs():
        args += ["--symlink" if kind == "symlink" else "--ro-bind", source, path]
    for directory in find_interpreter().bind_dirs:
        args += ["--ro-bind", directory, directory]
    return [*args, *bare_command()]


def command_job(argv: list[str]):
    def job() -> None:
        out = subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout
        if out != b"42\n":
            raise SystemExit(f"{argv[0]}: unexpected output {out!r}")
    return job


def sandbox_job(box: detain.Sandbox):
    def job() -> None:
        result = box.run(detain.Job.code(JOB))
        if result.stdout != b"42\n":
            raise SystemExit(f"detain: {result.error or result.stderr!r}")
    return job


def throughput(job, callers: int, seconds: float) -> float:
    """Jobs per second finished by `callers` threads, each running `job` in a loop."""
    done = [0] * callers
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def loop(index: int) -> None:
        try:
            while time.monotonic() < stop:
                job()
                done[index] += 1
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(done) / (time.monotonic() - started)


def latency(job, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        job()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


RELAY_MB = 8
RELAY = f"import sys; sys.stdout.buffer.write(b'x' * ({RELAY_MB} << 20))"


def relay_cost(backend: str) -> tuple[float, float]:
    """ms per MiB of stdout through the warm API, and through a pipe from bare Python."""
    policy = detain.Policy().merge({"backend": backend, "output": f"{RELAY_MB * 2}M"}, "bench")

    def bare(code: str):
        return lambda: subprocess.run([*bare_command()[:-1], code], stdout=subprocess.PIPE,
                                      check=True)

    def api(box: detain.Sandbox, code: str) -> float:
        samples = []
        for _ in range(9):
            box.wait_warm()  # a spare ready, the last run's remains removed: not timed
            started = time.perf_counter()
            result = box.run(detain.Job.code(code))
            samples.append(time.perf_counter() - started)
            if result.status != 0:
                raise SystemExit(f"detain: {result.error or result.stderr!r}")
        return statistics.median(samples)

    with detain.Sandbox(policy, warm=1) as box:
        detain_ms = (api(box, RELAY) - api(box, "pass")) * 1e3 / RELAY_MB
    bare_ms = (latency(bare(RELAY), 9) - latency(bare("pass"), 9)) * 1e3 / RELAY_MB
    return detain_ms, bare_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--backend", action="append")
    args = parser.parse_args()
    names = args.backend or [n for n in ("bwrap", "landlock") if probe(n).available]
    bare = command_job(bare_command())
    peers = {"bare": throughput(bare, args.callers, args.seconds)}
    raw = bwrap_command()
    if raw is not None:
        peers["raw bwrap"] = throughput(command_job(raw), args.callers, args.seconds)
    print(f"throughput, {args.callers} callers, {JOB} (jobs/s)")
    for name, value in peers.items():
        print(f"{name:>22} {value:8.1f}")
    for name in names:
        policy = detain.Policy().merge({"backend": name, "min_level": BACKENDS[name].level},
                                       "bench")
        with detain.Sandbox(policy, warm=1) as box:
            box.wait_warm()
            job = sandbox_job(box)
            job()
            rate = throughput(job, args.callers, args.seconds)
            vs = "  ".join(f"{rate / value:5.2f}x {peer}" for peer, value in peers.items())
            zygote = "zygote" if box._zygote is not None else "whole spares"
            print(f"{'detain ' + name:>22} {rate:8.1f}   {vs}   ({zygote}; target >= 200 "
                  "and >= 2x raw bwrap)")
        with detain.Sandbox(policy, warm=1) as box:  # one caller from the start
            box.wait_warm()
            job = sandbox_job(box)
            job()
            bare_ms = latency(bare, 20)
            warm_ms = latency(job, 20)
        print(f"{'':>22} back to back: warm {warm_ms * 1e3:.1f} ms, bare {bare_ms * 1e3:.1f}"
              f" ms, {warm_ms / bare_ms:.2f}x bare (target <= 0.5x)")
    if names:
        detain_ms, bare_ms = relay_cost(names[0])
        print(f"output relayed, {names[0]} API: {detain_ms:.2f} ms/MiB, bare {bare_ms:.2f} "
              f"ms/MiB, {detain_ms - bare_ms:+.2f} ms/MiB over bare (target <= 0.5)")


if __name__ == "__main__":
    main()
