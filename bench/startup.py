"""Start-up cost of each backend, as a ratio to the bare interpreter measured alongside it.

For every backend that probes OK here, a trivial job (`pass`) is timed through the Python
API (a Sandbox reused, so the backend is resolved once; every run still gets a fresh
sandbox) and through the CLI (`detain run --backend NAME -c pass`, a new process each time).
Measurements alternate with bare `python -I -S -c pass`, so machine noise hits both sides.
Container backends are also set beside their bare engine doing the same job (`podman run`,
`docker run`, `runsc do`), which gives detain's own overhead over the engine.

    python bench/startup.py [--runs N] [--backend NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import detain
from detain.backends import BACKENDS, probe

BARE = [os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"]


def timed(func) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def bare() -> None:
    subprocess.run(BARE, check=True)


def engine_command(name: str) -> list[str] | None:
    """The bare engine running the same trivial job with the same interpreter, or None."""
    from detain.host.interpreter import find_interpreter

    interp = find_interpreter()
    job = [interp.executable, "-I", "-S", "-c", "pass"]
    binds = [f"type=bind,source={d},destination={d},readonly"
             for d in ("/usr", *interp.bind_dirs)]
    flags = ["run", "--rm", "--network", "none", "--read-only", "--log-driver", "none",
             "--ulimit", "nofile=256:256", "--ulimit", "nproc=64:64"]
    flags += [arg for bind in binds for arg in ("--mount", bind)]
    if name == "podman" and shutil.which("podman"):
        from detain.backends.podman import find_runtime
        from detain.host.rootfs import skeleton

        runtime = find_runtime()
        root = skeleton(tuple(interp.bind_dirs))
        return ["podman", *(["--runtime", runtime[0]] if runtime else []),
                "--cgroup-manager", "cgroupfs", *flags, "--no-hosts", "--passwd=false",
                "--read-only-tmpfs=false", "--rootfs", str(root), *job]
    if name == "docker" and shutil.which("docker"):
        images = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                                 "detain-rootfs"], capture_output=True, text=True)
        image = images.stdout.split()[0] if images.stdout.split() else None
        return ["docker", *flags, image, *job] if image else None
    if name == "gvisor" and shutil.which("runsc") and os.geteuid() == 0:
        from detain.backends.gvisor import platform

        return ["runsc", "--network=none", f"--platform={platform(shutil.which('runsc'))}",
                "do", *job]
    return None


def measure(name: str, runs: int) -> dict[str, float]:
    level = BACKENDS[name].level
    box = detain.Sandbox(detain.Policy().merge({"backend": name, "min_level": level}, "bench"))
    job = detain.Job.code("pass")
    cli = [shutil.which("detain") or sys.executable, "run", "--backend", name,
           "--min-level", str(level), "-c", "pass"]
    if not shutil.which("detain"):
        cli[1:1] = ["-m", "detain"]

    def api() -> None:
        result = box.run(job)
        if result.status != 0:
            raise SystemExit(f"{name}: trivial job failed: {result.error or result.stderr!r}")

    def command() -> None:
        subprocess.run(cli, check=True)

    api()  # warm caches (seccomp filter, images, imports) once, like any second run would
    engine = engine_command(name)
    samples: dict[str, list[float]] = {"bare": [], "api": [], "cli": [], "engine": []}
    for _ in range(runs):
        samples["bare"].append(timed(bare))
        samples["api"].append(timed(api))
        samples["bare"].append(timed(bare))
        samples["cli"].append(timed(command))
        if engine is not None:
            samples["engine"].append(timed(lambda: subprocess.run(engine, check=True)))
    return {key: statistics.median(values) for key, values in samples.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--backend", action="append")
    args = parser.parse_args()
    names = args.backend or [n for n in BACKENDS if probe(n).available]
    print(f"{'backend':<12}{'bare ms':>9}{'API ms':>9}{'API x':>8}{'CLI ms':>9}{'CLI x':>8}"
          f"{'engine ms':>11}{'detain/engine':>15}")
    for name in names:
        if not probe(name).available:
            print(f"{name:<12} skipped: {probe(name).reason}")
            continue
        m = measure(name, args.runs if BACKENDS[name].level < 4 else max(5, args.runs // 6))
        engine = (f"{m['engine'] * 1e3:>11.1f}{m['api'] / m['engine'] - 1:>+14.0%}"
                  if "engine" in m else "")
        print(f"{name:<12}{m['bare'] * 1e3:>9.1f}{m['api'] * 1e3:>9.1f}"
              f"{m['api'] / m['bare']:>8.2f}{m['cli'] * 1e3:>9.1f}{m['cli'] / m['bare']:>8.2f}"
              + engine)
    print("targets: bwrap API <= 1.6x bare, CLI <= 3x bare; containers <= +10% over the engine")


if __name__ == "__main__":
    main()
