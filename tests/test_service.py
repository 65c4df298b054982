"""`detain serve --http`: Judge0's API, spoken to by the official `judge0` client, and
detain's own, on a real server with real sandboxes; hostile input from the wire."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import require
from service_servers import TOKEN, Server

judge0 = pytest.importorskip("judge0", reason="the official judge0 client (make test installs it)")
OTHER = "other-token-9876543210"


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text(f"""
[tokens.grader]
sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
timeout = 10
memory = "256M"
backend = "bwrap"

[tokens.other]
token = "{OTHER}"
timeout = 5
backend = "bwrap"
rate = 1
queue = 2
""")
    path.chmod(0o600)
    return path


@pytest.fixture
def service(state_dir, tokens_file):
    require("bwrap")
    private = state_dir / f"http-{time.monotonic_ns()}"
    private.mkdir()
    server = Server(private, "--tokens", str(tokens_file))
    yield server
    if server.proc.poll() is None:
        assert server.stop() == 0


def client(server: Server, token: str = TOKEN):
    return judge0.Client(server.url, {"X-Auth-Token": token})


def test_the_official_client_runs_python(service):
    c = client(service)
    done = judge0.run(client=c, source_code="import sys\nprint(6*7, sys.argv[1:])",
                      command_line_arguments="a 'b c'")
    assert done.status == judge0.Status.ACCEPTED
    assert done.stdout == "42 ['a', 'b c']\n"
    assert float(done.time) >= 0 and done.memory > 0
    graded = judge0.run(client=c, source_code="print(input().upper())", stdin="abc",
                        expected_output="ABC  \n\n")
    assert graded.status == judge0.Status.ACCEPTED
    wrong = judge0.run(client=c, source_code="print('no')", expected_output="yes")
    assert wrong.status == judge0.Status.WRONG_ANSWER
    crashed = judge0.run(client=c, source_code="raise SystemExit(3)")
    assert crashed.status == judge0.Status.RUNTIME_ERROR_NZEC and crashed.exit_code == 3
    slow = judge0.run(client=c, source_code="while True: pass", cpu_time_limit=1,
                      wall_time_limit=2)
    assert slow.status == judge0.Status.TIME_LIMIT_EXCEEDED


def test_batches_multi_file_programs_and_merged_stderr(service):
    c = client(service)
    many = judge0.run(client=c, submissions=[
        judge0.Submission(source_code=f"print({n} * 2)") for n in range(3)])
    assert [s.stdout for s in many] == ["0\n", "2\n", "4\n"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("main.py", "import helper\nhelper.hello()\n")
        z.writestr("helper.py", "def hello():\n    print('from helper')\n")
    status, answer = service.call("POST", "/submissions?base64_encoded=true&wait=true", {
        "language_id": 89, "additional_files": base64.b64encode(archive.getvalue()).decode()})
    assert status == 201, answer
    assert base64.b64decode(answer["stdout"]) == b"from helper\n", answer
    status, answer = service.call("POST", "/submissions?wait=true", {
        "language_id": 71, "redirect_stderr_to_stdout": True,
        "source_code": "import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr)"})
    assert answer["stdout"] == "out\nerr\n" and answer["stderr"] is None, answer


def test_tokens_ceilings_and_ownership(service):
    status, _ = service.call("GET", "/languages", token=None)
    assert status == 401
    status, _ = service.call("GET", "/languages", token="not-a-token-at-all")
    assert status == 401
    status, answer = service.call("POST", "/submissions", {
        "language_id": 71, "source_code": "pass", "memory_limit": 1024 * 1024})
    assert status == 422 and "memory_limit" in answer, answer
    status, answer = service.call("POST", "/submissions", {
        "language_id": 71, "source_code": "pass", "enable_network": True})
    assert status == 422 and "enable_network" in answer
    status, answer = service.call("POST", "/submissions?wait=true", {
        "language_id": 71, "source_code": "print(1)", "wall_time_limit": 3})
    assert status == 201, answer
    token = answer["token"]
    assert service.call("GET", f"/submissions/{token}", token=OTHER)[0] == 404
    assert service.call("DELETE", f"/submissions/{token}", token=OTHER)[0] == 404
    status, shown = service.call("GET", f"/submissions/{token}?fields=stdout,status")
    assert shown == {"stdout": "1\n", "status": {"id": 3, "description": "Accepted"}}
    assert service.call("DELETE", f"/submissions/{token}")[0] == 200
    assert service.call("GET", f"/submissions/{token}")[0] == 404
    config = service.call("GET", "/config_info")[1]
    assert config["max_wall_time_limit"] == 10 and config["max_memory_limit"] == 256 * 1024


def test_rate_limit_per_token(service):
    codes = [service.call("GET", "/statuses", token=OTHER)[0] for _ in range(6)]
    assert codes[0] == 200 and 429 in codes


@pytest.mark.parametrize("body, field", [
    ({"language_id": 999, "source_code": "pass"}, "language_id"),
    ({"language_id": 71}, "source_code"),
    ({"language_id": 71, "source_code": "pass", "cpu_time_limit": -1}, "cpu_time_limit"),
    ({"language_id": 71, "source_code": "pass", "wall_time_limit": 1e300}, "wall_time_limit"),
    ({"language_id": 71, "source_code": "print(1)\x00"}, "source_code"),
    ({"language_id": 71, "source_code": "pass", "number_of_runs": 5}, "number_of_runs"),
    ({"language_id": "71", "source_code": "pass"}, "language_id"),
    ({"language_id": 71, "source_code": ["pass"]}, "source_code"),
    ([1, 2, 3], "submission"),
])
def test_hostile_submissions_are_422(service, body, field):
    status, answer = service.call("POST", "/submissions", body)
    assert status == 422 and field in answer, answer


def test_hostile_bodies(service):
    status, answer = service.call("POST", "/submissions?base64_encoded=true",
                                  {"language_id": 71, "source_code": "%%%not base64"})
    assert status == 422 and "source_code" in answer
    status, answer = service.call("POST", "/submissions", raw=b"{not json")
    assert status == 400 and "error" in answer
    status, answer = service.call("POST", "/submissions", raw=b"[" * 100000 + b"]" * 100000)
    assert status in (400, 422), answer
    with socket.create_connection(("127.0.0.1", service.port), 30) as raw:
        raw.sendall(b"POST /submissions HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " + TOKEN.encode()
                    + b"\r\nContent-Type: application/json\r\nContent-Length: 9437184\r\n\r\n"
                    + b" " * 65536)
        assert raw.recv(100).startswith(b"HTTP/1.1 413 ")  # refused before it is read
    status, answer = service.call("POST", "/submissions?wait=true", {
        "language_id": 71, "source_code": "print('\u202eodd \U0001f600')"})
    assert status == 201 and answer["status"]["id"] == 3, answer
    for field in ("source_code", "command_line_arguments"):
        status, answer = service.call("POST", "/submissions", {
            "language_id": 71, "source_code": "pass", field: "\udcff"})  # lone surrogate
        assert status == 422 and field in answer, answer
    status, answer = service.call("POST", "/submissions", {
        "language_id": 71, "source_code": "pass", "cpu_time_limit": 10 ** 400})
    assert status == 422 and "cpu_time_limit" in answer, answer
    assert service.call("GET", "/submissions/" + "x" * 5000)[0] == 404
    assert service.call("GET", "/languages/abc")[0] == 404


def test_callbacks_never_reach_private_addresses(state_dir, tokens_file):
    require("bwrap")
    got: list[bytes] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_port}/done"
    private = state_dir / f"http-{time.monotonic_ns()}"
    private.mkdir()
    closed = Server(private, "--tokens", str(tokens_file))
    try:
        status, answer = closed.call("POST", "/submissions",
                                     {"language_id": 71, "source_code": "pass",
                                      "callback_url": url})
        assert status == 422 and "not a public address" in answer["callback_url"][0]
        status, answer = closed.call("POST", "/submissions", {
            "language_id": 71, "source_code": "pass",
            "callback_url": "http://user:pw@example.com/"})
        assert status == 422
    finally:
        assert closed.stop() == 0
    opened = Server(private, "--tokens", str(tokens_file), "--callback-allow", "127.0.0.0/8")
    try:
        status, answer = opened.call("POST", "/submissions", {
            "language_id": 71, "source_code": "print('called back')", "callback_url": url})
        assert status == 201, answer
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered = json.loads(got[0])
        assert delivered["token"] == answer["token"]
        assert base64.b64decode(delivered["stdout"]) == b"called back\n"
    finally:
        assert opened.stop() == 0
        hook.shutdown()


def test_an_accepted_submission_survives_a_killed_server(state_dir, tokens_file):
    require("bwrap")
    private = state_dir / f"http-{time.monotonic_ns()}"
    private.mkdir()
    server = Server(private, "--tokens", str(tokens_file))
    status, answer = server.call("POST", "/submissions", {
        "language_id": 71, "source_code": "import time\ntime.sleep(2)\nprint('finished')"})
    assert status == 201
    time.sleep(0.5)
    server.stop(signal.SIGKILL)
    server.start()  # same state dir, same store: the unfinished row runs again
    try:
        token, shown = answer["token"], {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = server.call("GET", f"/submissions/{token}")[1]
            if shown["status"]["id"] > 2:
                break
            time.sleep(0.2)
        assert shown["stdout"] == "finished\n", shown
    finally:
        assert server.stop() == 0


def test_detains_own_api_health_and_metrics(service):
    status, answer = service.call("POST", "/v1/runs?wait=true", {
        "code": "import sys; print(sys.stdin.read())", "stdin": "hello",
        "policy": {"timeout": 5, "network": "none"}})
    assert status == 201, answer
    assert answer["result"]["stdout"] == "hello\n" and answer["state"] == "done"
    run_id = answer["id"]
    status, sarif = service.call("GET", f"/v1/runs/{run_id}?format=sarif")
    assert status == 200 and sarif["version"] == "2.1.0"
    status, page = service.call("GET", f"/v1/runs/{run_id}?format=html")
    assert status == 200 and "<html" in page.lower()
    status, refused = service.call("POST", "/v1/runs", {
        "code": "pass", "policy": {"timeout": 60, "backend": "process"}})
    assert status == 422 and "refused" in refused["error"]
    assert service.call("GET", f"/v1/runs/{run_id}", token=OTHER)[0] == 404
    assert service.call("GET", "/healthz", token=None) == (200, {"ok": True,
                                                                 "mode": "embedded",
                                                                 "backlog": 0})
    status, metrics = service.call("GET", "/metrics")
    assert status == 200
    assert 'detain_submissions_accepted_total{kind="run"} 1.0' in metrics
    assert 'detain_submissions_finished_total{kind="run",status="0"} 1.0' in metrics


def test_without_tokens_it_listens_on_loopback_only(state_dir):
    done = subprocess.run([sys.executable, "-m", "detain", "serve", "--http", "0.0.0.0:2358"],
                          env={**os.environ, "DETAIN_STATE_DIR": str(state_dir)},
                          capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"loopback only" in done.stderr and b"--tokens" in done.stderr


def test_one_client_cannot_exhaust_the_server(service, state_dir):
    """What the review of the service found: repeated tokens multiplying an answer, a
    batch paying the rate of one request, one token filling the shared queue, guessing
    tokens at full speed, a store other users could read."""
    status, answer = service.call("POST", "/submissions?wait=true", {
        "language_id": 71, "source_code": "print('x' * 3_000_000)"})
    assert status == 201, answer
    many = ",".join([answer["token"]] * 20)
    status, refused = service.call("GET", f"/submissions/batch?tokens={many}"
                                          "&base64_encoded=true&fields=stdout")
    assert status == 413 and "fewer fields or tokens" in refused["error"]
    status, one = service.call("GET", f"/submissions/batch?tokens={answer['token']}")
    assert status == 200 and len(one["submissions"]) == 1
    batch = {"submissions": [{"language_id": 71, "source_code": "pass"}] * 5}
    assert service.call("POST", "/submissions/batch", batch, token=OTHER)[0] == 429
    time.sleep(2.5)  # the bucket refills
    slow = {"language_id": 71, "source_code": "import time\ntime.sleep(3)"}
    codes = [service.call("POST", "/submissions", slow, token=OTHER)[0] for _ in range(3)]
    assert codes[:2] == [201, 201] and codes[2] == 429, codes  # its queue share is 2
    guesses = [service.call("GET", "/about", token=f"guess-{n}")[0] for n in range(15)]
    assert 429 in guesses
    files = list(Path(service.env["DETAIN_STATE_DIR"]).glob("service.db*"))  # WAL, shm too
    assert len(files) == 3 and all(f.stat().st_mode & 0o077 == 0 for f in files), files


def test_a_trickling_client_is_cut_off(service):
    """A connection that never finishes its headers is closed (slowloris)."""
    with socket.create_connection(("127.0.0.1", service.port), 30) as raw:
        raw.sendall(b"GET /about HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        raw.settimeout(30)
        started = time.monotonic()
        while True:
            try:
                raw.sendall(b"X-a: b\r\n")
                if not raw.recv(100, socket.MSG_DONTWAIT):
                    break
            except BlockingIOError:
                time.sleep(1)
            except OSError:
                break
            assert time.monotonic() - started < 25, "the server held the connection"
    assert time.monotonic() - started >= 5


def test_without_tokens_web_pages_cannot_use_it(state_dir):
    require("bwrap")
    private = state_dir / f"http-{time.monotonic_ns()}"
    private.mkdir()
    server = Server(private)
    try:
        body = {"language_id": 71, "source_code": "print(1)"}
        for headers, expected in (({"Host": "evil.example"}, 403),
                                  ({"Origin": "http://evil.example"}, 403),
                                  ({"Content-Type": "text/plain"}, 415)):
            status, _ = server.call("POST", "/submissions", body, token=None, headers=headers)
            assert status == expected, (headers, status)
        assert server.call("POST", "/submissions", {"language_id": 71,
                                                    "source_code": "pass"}, token=None)[0] == 201
    finally:
        assert server.stop() == 0


def _resident(pid: int) -> tuple[int, int]:
    """A server's resident memory (bytes) and open file descriptors now."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib * 1024, len(os.listdir(f"/proc/{pid}/fd"))


def test_bounded_loopback_load(state_dir, tmp_path):
    """200 submissions from 8 clients at once, each on its own kept-alive connection: every
    answer is the right one (no 5xx, no 429 at this token's rate), and the server's memory
    and descriptors after the load are those of a server that has already been loaded once
    (a leak per submission would show as ~MBs and ~200 fds). Correctness under load, not
    speed: bench/service.py measures that."""
    require("bwrap")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[tokens.load]\ntoken = "{TOKEN}"\nbackend = "bwrap"\nrate = 10000\n')
    tokens.chmod(0o600)
    private = state_dir / f"http-{time.monotonic_ns()}"
    private.mkdir()
    server = Server(private, "--tokens", str(tokens))
    clients, each = 8, 25
    failures: list[str] = []

    def load(first: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            for n in range(first, first + each):
                body = {"language_id": 71, "source_code": "print(int(input()) ** 2)",
                        "stdin": str(n), "expected_output": str(n * n)}
                connection.request("POST", "/submissions?wait=true&fields=stdout,status",
                                   json.dumps(body), {"Content-Type": "application/json",
                                                      "X-Auth-Token": TOKEN})
                answer = connection.getresponse()
                shown = json.loads(answer.read())
                if answer.status != 201 or shown != {
                        "stdout": f"{n * n}\n", "status": {"id": 3, "description": "Accepted"}}:
                    failures.append(f"submission {n}: {answer.status} {shown}")
        except Exception as exc:  # reported with the others, not lost in a thread
            failures.append(f"client from {first}: {type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def burst(base: int) -> float:
        threads = [threading.Thread(target=load, args=(base + c * each,))
                   for c in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.monotonic() - started

    try:
        burst(0)  # the first load: warm spares for 8 callers, threads, the store's pages
        assert not failures, failures[:5]
        memory, fds = _resident(server.proc.pid)
        took = burst(clients * each)
        assert not failures, failures[:5]
        assert took < 30, f"{clients * each} submissions took {took:.1f} s"
        grown, opened = (after - before for after, before in
                         zip(_resident(server.proc.pid), (memory, fds), strict=True))
        assert grown < 64 << 20, f"the server grew by {grown >> 20} MiB"
        assert opened < 32, f"the server holds {opened} more descriptors"
        metrics = server.call("GET", "/metrics")[1]
        assert 'detain_requests_rejected_total{reason="5' not in metrics
        assert f'detain_submissions_finished_total{{kind="judge0",status="3"}} ' \
               f'{2 * clients * each}.0' in metrics
    finally:
        assert server.stop() == 0


def test_the_store_commits_concurrent_writes_together(tmp_path):
    """The SQLite store's group commit: writes from many threads at once are all there
    after, each caller got its own answer, and a failing write (a token used twice) fails
    alone, not the writes that shared its transaction."""
    from detain.service.store import QueueFull, Store

    store = Store(f"sqlite:///{tmp_path / 'service.db'}")
    errors: list[str] = []

    def write(n: int) -> None:
        try:
            store.add(f"t{n % 40}", "judge0", "someone", {"n": n})
        except Exception as exc:
            errors.append(type(exc).__name__)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(80)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 40 and set(errors) == {"IntegrityError"}, errors
    assert len(store.many([f"t{n}" for n in range(40)])) == 40
    assert store.start("t1", "w")["state"] == "running"
    assert store.finish("t1", {"status_id": 3})["response"] == {"status_id": 3}
    assert store.finish("t1", {"status_id": 4}) is None  # a result is stored once
    assert store.counts() == {"queued": 39}
    with pytest.raises(QueueFull):  # someone's queue share is full: counted with the insert
        store.add("t99", "judge0", "someone", {}, most=39)
    store.add("t99", "judge0", "another", {}, most=39)
    store.mark_running("t3", "w")  # not waited for: the next durable write commits it too
    store.add("t100", "judge0", "another", {})
    assert store.get("t3")["state"] == "running"
    store.close()
    assert store.delete("t2")  # after close, a write commits on its own
    mode = (tmp_path / "service.db").stat().st_mode
    assert mode & 0o077 == 0
