"""The HTTP service under load: sustained submissions/s and p50/p99 latency with `wait=true`.

Two jobs: `print(42)`, and a grading job of 10 test cases (one submission each, the way a
judge grades, stdin and expected output per case). Two set-ups: embedded (one `detain serve
--http`, SQLite, 2 workers) and scaled out (the API, Redis, PostgreSQL and one then two
`detain worker`s of concurrency 1: how throughput grows with workers). Each is loaded by C
concurrent clients on loopback, each keeping its connection open. Beside each, measured in
the same run just before it, the warm API on the same backend: one `Sandbox(warm=C)` run by
C threads, the most the sandboxes alone can do here, and a lone warm run's p50 (the issue's
goal: a submission's p50 within 2x of it; "x API" compares with the API under the same C
callers). The distributed set-up needs redis-server and PostgreSQL (`make test` installs
them); `--embedded` leaves it out.

On one machine everything shares the same cores, so beside the rate the service's CPU is
measured: CPU-ms per submission of the server (its sandboxes included), or of the API, the
workers (theirs included), Redis and PostgreSQL, and how many of the machine's cores were
busy meanwhile (everyone's). Workers scale where their CPU per submission stays flat: the
rate a core buys is then the same with one worker as with two, and more cores buy more.

    python bench/service.py [--seconds S] [--clients C] [--backend bwrap] [--embedded]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_servers import TOKEN, Postgres, Redis, Server

GRADER = "n = int(input())\nprint(sum(range(n)))\n"


class Client:
    """One HTTP/1.1 connection kept open, as a service's clients keep theirs."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def __call__(self, body: dict) -> None:
        self.connection.request("POST", "/submissions?wait=true", json.dumps(body),
                                {"Content-Type": "application/json", "X-Auth-Token": TOKEN})
        answer = self.connection.getresponse()
        shown = json.loads(answer.read())
        if answer.status != 201 or shown["status"]["id"] != 3:
            raise RuntimeError(f"a submission was not accepted: {answer.status} {shown}")


def load(call, jobs: list, seconds: float, clients: int) -> tuple[float, list[float]]:
    """Calls/s and every latency: `clients` threads, each with its own `call()`, cycling
    through `jobs` for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        run, n = call(), offset
        while time.monotonic() < stop:
            started = time.perf_counter()
            run(jobs[n % len(jobs)])
            took = time.perf_counter() - started
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


def warm_api(backend: str, bodies: list[dict], seconds: float, clients: int
             ) -> tuple[float, list[float], float]:
    """The API on the jobs of `bodies`: calls/s and latencies of `clients` threads on one
    warm Sandbox, and a lone warm run's p50 (after the spares are ready each time)."""
    from detain import Policy, Sandbox
    from detain.job import Job

    jobs = [Job.code(b["source_code"], stdin=b.get("stdin", "").encode()) for b in bodies]

    def check(box: Sandbox, job: Job) -> None:
        result = box.run(job)
        if result.exit_code != 0 or result.error:
            raise RuntimeError(f"a warm run failed: {result.error or result.stderr[-300:]}")

    with Sandbox(Policy(backend=backend), warm=clients) as box:
        box.wait_warm()
        lone = []
        for n in range(30):
            box.wait_warm()
            started = time.perf_counter()
            check(box, jobs[n % len(jobs)])
            lone.append(time.perf_counter() - started)
        box.wait_warm()
        with Cpu({"API": lambda: [os.getpid()]}) as used:  # its sandboxes are its children
            rate, latencies = load(lambda: lambda job: check(box, job), jobs, seconds, clients)
    print(used.line(len(latencies), "run"))
    return rate, latencies, statistics.median(lone)


def cpu_seconds(pid: int) -> float:
    """CPU of a process and of its children it has reaped (a server's sandboxes)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and its descendants (PostgreSQL's backends under its postmaster)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(
                    ")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    found = [pid]
    for member in found:
        found.extend(child for child, parent in parents.items() if parent == member)
    return found


def busy_cores() -> tuple[float, float]:
    """(busy, total) jiffies of the machine so far, every process's."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Cpu:
    """CPU-ms per submission of named groups of processes (each with its descendants:
    sandboxes, zygotes, PostgreSQL's backends) over one load."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def __enter__(self) -> Cpu:
        self.pids = {name: pids() for name, pids in self.groups.items()}
        self.before = {name: sum(map(cpu_seconds, pids)) for name, pids in self.pids.items()}
        self.machine = busy_cores()
        return self

    def __exit__(self, *exc: object) -> None:
        # Processes that ended meanwhile count in their parents' reaped CPU; those that
        # started meanwhile count whole.
        self.used = {name: sum(map(cpu_seconds, set(self.pids[name]) | set(pids())))
                     - self.before[name] for name, pids in self.groups.items()}
        busy, total = (now - then for now, then in zip(busy_cores(), self.machine,
                                                          strict=True))
        self.busy = busy / total * (os.cpu_count() or 1) if total else 0.0

    def line(self, count: int, each: str = "submission") -> str:
        parts = ", ".join(f"{name} {used / count * 1000:.1f}" for name, used in self.used.items())
        total = sum(self.used.values()) / count * 1000
        return (f"    CPU-ms a {each}: {parts}; {total:.1f} in all ({1000 / total:.0f} {each}s/s "
                f"a core); the machine's cores busy meanwhile: {self.busy:.1f} of "
                f"{os.cpu_count()}")


def report(name: str, rate: float, latencies: list[float], api: tuple | None = None) -> None:
    """One line; beside the service's, how it compares with the API of the same run."""
    cut = statistics.quantiles(latencies, n=100)
    p50, p99 = statistics.median(latencies), cut[98]
    line = (f"{name:<30} {rate:6.1f}/s  p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms  "
            f"n={len(latencies)}")
    if api is not None:
        api_rate, api_latencies, lone = api
        line += (f"  | {rate / api_rate:4.0%} of the API's rate, p50 "
                 f"{p50 / statistics.median(api_latencies):3.1f}x the API's with as many "
                 f"callers, {p50 / lone:3.1f}x a lone warm run")
    print(line)


def compare(name: str, url: str, bodies: list[dict], args: argparse.Namespace,
            cpu: dict[str, Callable[[], list[int]]]) -> float:
    """The warm API on these jobs, then the service on the same: under load (C clients),
    with the CPU of the `cpu` groups of processes, and one client alone, whose p50 is the
    one to hold against a lone warm run. Returns the service's rate under load."""
    api = warm_api(args.backend, bodies, args.seconds, args.clients)
    report(f"  warm API, {name}", api[0], api[1])
    # Not counted: the server's spares for C callers, workers that have just started.
    load(lambda: Client(url), bodies, 2.0, args.clients)
    with Cpu(cpu) as used:
        served = load(lambda: Client(url), bodies, args.seconds, args.clients)
    report(f"  service, {name}", *served, api)
    print(used.line(len(served[1])))
    rate, latencies = load(lambda: Client(url), bodies, args.seconds / 2, 1)
    p50 = statistics.median(latencies)
    print(f"  one client alone, {name}: {rate:.1f}/s, p50 {p50 * 1000:.1f} ms = "
          f"{p50 / api[2]:.1f}x a lone warm run's {api[2] * 1000:.1f} ms")
    return served[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--backend", default="bwrap")
    parser.add_argument("--embedded", action="store_true",
                        help="leave out the distributed set-up (Redis, PostgreSQL, workers)")
    parser.add_argument("--workers", type=int, default=2, help="of the embedded server")
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
    print(f"{args.backend}, {args.clients} clients, {args.seconds:g} s each, "
          f"{os.cpu_count()} CPUs")
    try:
        embedded = Server(root / "embedded", "--tokens", str(tokens), "--workers",
                          str(args.workers))
        print(f"embedded, {args.workers} workers:")
        try:
            for name, bodies in jobs.items():
                compare(name, embedded.url, bodies, args,
                        {"server": lambda: family(embedded.proc.pid)})
        finally:
            embedded.stop()
        if args.embedded:
            return
        redis, postgres = Redis(root / "redis"), Postgres(root / "pg")
        common = ["--broker", redis.url, "--database", postgres.url, "--tokens", str(tokens)]
        api = Server(root / "api", *common)
        env = {**os.environ, "DETAIN_STATE_DIR": str(root / "workers")}
        (root / "workers").mkdir()
        workers: list[subprocess.Popen] = []
        rates: dict[int, float] = {}
        postmaster = int((root / "pg" / "data" / "postmaster.pid").read_text().split()[0])
        cpu = {"API": lambda: family(api.proc.pid),
               "workers": lambda: [p for w in workers for p in family(w.pid)],
               "Redis": lambda: [redis.proc.pid], "PostgreSQL": lambda: family(postmaster)}
        try:
            for count in (1, 2):  # the same load on one worker, then on two
                while len(workers) < count:
                    workers.append(subprocess.Popen(
                        [sys.executable, "-m", "detain", "worker", "--name",
                         f"w{len(workers)}", "--concurrency", "1", *common], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                print(f"{count} worker(s) of concurrency 1 (the API, Redis and PostgreSQL on "
                      "the same CPUs):")
                rates[count] = compare("print(42)", api.url, jobs["print(42)"], args, cpu)
            compare("grading, 10 cases", api.url, jobs["grading, 10 cases"], args, cpu)
            print(f"distributed print(42): 1 worker {rates[1]:.1f}/s, 2 workers "
                  f"{rates[2]:.1f}/s: x{rates[2] / rates[1]:.2f} for twice the workers "
                  f"({rates[2] / min(2, os.cpu_count() or 1):.1f}/s a core)")
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
