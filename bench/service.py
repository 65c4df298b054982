"""The HTTP service under load: sustained submissions/s and p50/p99 latency with `wait=true`.

Two jobs: `print(42)`, and a grading job of 10 test cases (one submission each, the way a
judge grades, stdin and expected output per case). Two set-ups: embedded (one
`detain serve --http`, SQLite, 2 workers) and scaled out (the API, Redis, PostgreSQL and
two `detain worker`s of concurrency 1). Each is loaded by C concurrent clients on loopback.
Beside them, a warm `Sandbox.run` of the same job on the same backend: p50 of a
submission should stay within 2x of it. Needs the service extra, redis-server and
PostgreSQL (`make test` installs them).

    python bench/service.py [--seconds S] [--clients C] [--backend bwrap]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_servers import TOKEN, Postgres, Redis, Server

GRADER = "n = int(input())\nprint(sum(range(n)))\n"


def post(url: str, body: dict) -> float:
    request = urllib.request.Request(url + "/submissions?wait=true", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "X-Auth-Token": TOKEN})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        shown = json.loads(answer.read())
    if shown["status"]["id"] != 3:
        raise RuntimeError(f"a submission was not accepted: {shown}")
    return time.perf_counter() - started


def load(url: str, bodies: list[dict], seconds: float, clients: int) -> tuple[float, list[float]]:
    """Submissions/s and every latency, `clients` threads cycling through `bodies`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        n = offset
        while time.monotonic() < stop:
            took = post(url, bodies[n % len(bodies)])
            with lock:
                latencies.append(took)
            n += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - started), latencies


def warm_api(backend: str, runs: int = 30) -> float:
    from detain import Policy, Sandbox
    from detain.job import Job

    with Sandbox(Policy(backend=backend), warm=1) as box:
        box.wait_warm()
        took = []
        for _ in range(runs):
            box.wait_warm()
            started = time.perf_counter()
            box.run(Job.code("print(42)"))
            took.append(time.perf_counter() - started)
    return statistics.median(took)


def report(name: str, rate: float, latencies: list[float], warm: float) -> None:
    cut = statistics.quantiles(latencies, n=100)
    p50, p99 = statistics.median(latencies), cut[98]
    print(f"{name:<34} {rate:7.1f}/s  p50 {p50 * 1000:7.1f} ms ({p50 / warm:4.1f}x warm API)  "
          f"p99 {p99 * 1000:7.1f} ms  n={len(latencies)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--backend", default="bwrap")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="detain-bench-service-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    tokens = root / "tokens.toml"
    tokens.write_text(f'[tokens.bench]\ntoken = "{TOKEN}"\nbackend = "{args.backend}"\n'
                      "rate = 100000\n")
    tokens.chmod(0o600)
    jobs = {"print(42)": [{"language_id": 71, "source_code": "print(42)"}],
            "grading, 10 cases": [{"language_id": 71, "source_code": GRADER, "stdin": f"{n}\n",
                                   "expected_output": f"{sum(range(n))}\n"} for n in range(10)]}
    warm = warm_api(args.backend)
    print(f"warm Sandbox.run of print(42) on {args.backend}: {warm * 1000:.1f} ms; "
          f"{args.clients} clients, {args.seconds:g} s each")
    try:
        embedded = Server(root / "embedded", "--tokens", str(tokens), "--workers", "2")
        try:
            for name, bodies in jobs.items():
                report(f"embedded, {name}", *load(embedded.url, bodies, args.seconds,
                                                  args.clients), warm)
        finally:
            embedded.stop()
        redis, postgres = Redis(root / "redis"), Postgres(root / "pg")
        common = ["--broker", redis.url, "--database", postgres.url, "--tokens", str(tokens)]
        api = Server(root / "api", *common)
        env = {**os.environ, "DETAIN_STATE_DIR": str(root / "workers")}
        (root / "workers").mkdir()
        workers = [subprocess.Popen([sys.executable, "-m", "detain", "worker", "--name", f"w{i}",
                                     "--concurrency", "1", *common], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for i in range(2)]
        try:
            for name, bodies in jobs.items():
                report(f"2 workers, {name}", *load(api.url, bodies, args.seconds,
                                                   args.clients), warm)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=60)
            api.stop()
            redis.stop()
            postgres.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
