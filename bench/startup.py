"""Start-up cost of each backend, as a ratio to the bare interpreter measured alongside it.

For every backend that probes OK here, a trivial job (`pass`) is timed:
  * API cold: `Sandbox.run` starting its sandbox for the job (a Sandbox reused, so the
    backend is resolved once; every run still gets a fresh sandbox);
  * API warm: the same with `Sandbox(warm=1)`, timed once its spare is ready (a run takes
    the spare; the replacement starts after the result), as a platform running one job
    after another sees it while it keeps up;
  * CLI cold: `detain run --backend NAME -c pass`, a new process each time, no server;
  * CLI served: the same command with a `detain serve` of the bench's own listening, timed
    once the server has had time to start its next spare (a pause of twice the cold API
    time between commands, as between a person's or a CI step's commands).
The CLI runs in an empty temporary directory, so no pyproject.toml is parsed.
Measurements alternate with bare `python -I -S -c pass`, so machine noise hits both sides.
Raw bwrap (every namespace unshared, the same binds; bench/throughput.py) runs the job
alongside too, the API cold time's yardstick. Container backends are also set beside
their bare engine doing the same job (`podman run`, `docker run`, `runsc do`), which gives
detain's own overhead over the engine, cold and warm. detain is byte-compiled first.

    python bench/startup.py [--runs N] [--backend NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import bwrap_command

import detain
from detain.backends import BACKENDS, load, probe

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


class Server:
    """A `detain serve` of the bench's own, on a state dir of its own."""

    def __init__(self, state: Path) -> None:
        self.env = {**os.environ, "DETAIN_STATE_DIR": str(state)}
        self.env.pop("DETAIN_NO_SERVER", None)
        self.proc = subprocess.Popen([*detain_command(), "serve"], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        if "listening" not in line:
            raise SystemExit(f"detain serve did not start: {line}{self.proc.stderr.read()!r}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def detain_command() -> list[str]:
    found = shutil.which("detain") or str(Path(sys.executable).with_name("detain"))
    return [found] if os.access(found, os.X_OK) else [sys.executable, "-m", "detain"]


def measure(name: str, runs: int, server: Server | None, workdir: str) -> dict[str, float]:
    level = BACKENDS[name].level
    policy = detain.Policy().merge({"backend": name, "min_level": level}, "bench")
    cold_box = detain.Sandbox(policy)
    warm_box = detain.Sandbox(policy, warm=1) if load(name).warm else None
    job = detain.Job.code("pass")
    cli = [*detain_command(), "run", "--backend", name, "--min-level", str(level), "-c", "pass"]
    local = {**os.environ, "DETAIN_NO_SERVER": "1"}

    def check(result) -> None:
        if result.status != 0:
            raise SystemExit(f"{name}: trivial job failed: {result.error or result.stderr!r}")

    def command(env) -> None:
        subprocess.run(cli, check=True, env=env, cwd=workdir)

    check(cold_box.run(job))  # warm caches (seccomp filter, images, imports) once
    samples: dict[str, list[float]] = {k: [] for k in (
        "bare", "api_cold", "api_warm", "cli_cold", "cli_served", "engine", "raw_bwrap")}
    engine = engine_command(name)
    raw = bwrap_command()
    if server is not None:
        command(server.env)  # the server's first command of this policy leaves its spare
    try:
        for _ in range(runs):
            samples["bare"].append(timed(bare))
            samples["api_cold"].append(timed(lambda: check(cold_box.run(job))))
            if warm_box is not None:
                warm_box.wait_warm()
                samples["bare"].append(timed(bare))
                samples["api_warm"].append(timed(lambda: check(warm_box.run(job))))
            samples["cli_cold"].append(timed(lambda: command(local)))
            if server is not None:
                time.sleep(2 * statistics.median(samples["api_cold"]))
                samples["bare"].append(timed(bare))
                samples["cli_served"].append(timed(lambda: command(server.env)))
            if engine is not None:
                samples["engine"].append(timed(lambda: subprocess.run(engine, check=True)))
            if raw is not None:
                samples["raw_bwrap"].append(timed(lambda: subprocess.run(
                    raw, check=True, stdout=subprocess.DEVNULL)))
    finally:
        if warm_box is not None:
            warm_box.close()
    return {key: statistics.median(values) for key, values in samples.items() if values}


def compile_detain() -> None:
    """Byte-compile detain first, as installing it does. Under PYTHONDONTWRITEBYTECODE (set
    in many CI and container images) a checkout's module edited since its .pyc was written
    is compiled again by every `detain` process, tens of ms a cold run no installed copy
    pays."""
    import compileall

    compileall.compile_dir(Path(detain.__file__).parent, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backend", action="append")
    args = parser.parse_args()
    compile_detain()
    names = args.backend or [n for n in BACKENDS if probe(n).available]
    columns = ("backend", "bare", "API cold", "x", "API warm", "x", "CLI cold", "x",
               "CLI served", "x", "engine", "cold/eng", "warm/eng", "raw bwrap", "cold/raw")
    widths = (10, 7, 9, 6, 9, 6, 9, 6, 11, 6, 8, 9, 9, 10, 9)
    print("".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)) + "   (ms)")
    with tempfile.TemporaryDirectory(prefix="detain-bench-") as scratch:
        state = Path(scratch) / "state"
        state.mkdir(mode=0o711)
        os.chmod(scratch, 0o711)
        workdir = Path(scratch) / "cwd"
        workdir.mkdir()
        server = Server(state)
        try:
            for name in names:
                if not probe(name).available:
                    print(f"{name:>10}  skipped: {probe(name).reason}")
                    continue
                runs = args.runs if BACKENDS[name].level < 4 else max(5, args.runs // 4)
                print(row(name, measure(name, runs, server, str(workdir))), flush=True)
        finally:
            server.stop()
    print("targets (issue 14): CLI cold <= 4x bare, API cold <= 2x raw bwrap, API warm <= 0.5x "
          "bare; gvisor cold <= 1.1x runsc do")


def row(name: str, m: dict[str, float]) -> str:
    def ms(key: str, width: int) -> str:
        return f"{m[key] * 1e3:>{width}.1f}" if key in m else f"{'-':>{width}}"

    def ratio(key: str, width: int = 6) -> str:
        return f"{m[key] / m['bare']:>{width}.2f}" if key in m else f"{'-':>{width}}"

    def over(key: str) -> str:
        return f"{m[key] / m['engine'] - 1:>+9.0%}" if key in m and "engine" in m else \
            f"{'-':>9}"

    return (f"{name:>10}{ms('bare', 7)}{ms('api_cold', 9)}{ratio('api_cold')}"
            f"{ms('api_warm', 9)}{ratio('api_warm')}{ms('cli_cold', 9)}{ratio('cli_cold')}"
            f"{ms('cli_served', 11)}{ratio('cli_served')}{ms('engine', 8)}"
            f"{over('api_cold')}{over('api_warm')}{ms('raw_bwrap', 10)}"
            + (f"{m['api_cold'] / m['raw_bwrap']:>9.2f}" if "raw_bwrap" in m else f"{'-':>9}"))


if __name__ == "__main__":
    main()
