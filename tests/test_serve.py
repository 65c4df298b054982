"""`detain serve` and the `detain run` client that uses it: real server, real sandboxes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import leftovers, require


def cli(env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detain", *args], env=env,
                          capture_output=True, timeout=120, **kwargs)


def start_server(env: dict[str, str], *args: str) -> subprocess.Popen:
    """A server whose stderr is read all along (a full pipe would stall it), kept in
    `server.said`; faulthandler on, so that a hung one can be made to show its threads."""
    server = subprocess.Popen([sys.executable, "-m", "detain", "serve", *args],
                              env={**env, "PYTHONFAULTHANDLER": "1"},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    line = server.stderr.readline().decode()
    assert "listening on" in line, line + server.stderr.read().decode()
    server.said = []
    server.reader = threading.Thread(target=lambda: server.said.extend(server.stderr),
                                     daemon=True)
    server.reader.start()
    return server


def stop_server(server: subprocess.Popen, env: dict[str, str]) -> str:
    """SIGTERM, then what the server said. One that hangs shows its threads' stacks
    (SIGABRT under faulthandler) and is killed, and its state dir swept, so that its
    failure stays this test's own instead of leaving mounts to every later test."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.send_signal(signal.SIGABRT)
        server.wait(timeout=10)
        server.reader.join(timeout=10)
        subprocess.run([sys.executable, "-c", "from detain.host import rundir; rundir.sweep()"],
                       env=env, timeout=60)
        pytest.fail("detain serve did not stop within 30 s of SIGTERM:\n"
                    + b"".join(server.said).decode(errors="replace"))
    server.reader.join(timeout=10)
    assert server.returncode == 0, b"".join(server.said).decode(errors="replace")
    return b"".join(server.said).decode(errors="replace")


@pytest.fixture
def served(state_dir):
    """A server on a state dir of its own; stopped (and checked clean) afterwards."""
    private = state_dir / f"serve-{time.monotonic_ns()}"
    private.mkdir(mode=0o711)
    env = {**os.environ, "DETAIN_STATE_DIR": str(private)}
    env.pop("DETAIN_NO_SERVER", None)
    server = start_server(env)
    yield env, server, private
    if server.poll() is None:
        assert "stopped" in stop_server(server, env)
    assert not (private / "serve.sock").exists()
    assert leftovers(private, {server.pid}) == {}


def test_run_goes_through_the_server(served, tmp_path):
    require("process")
    env, server, _ = served
    # The sandbox's parent is the run's warden (host/warden.py), a child of the server.
    probe = ("import os, pathlib, sys; print(pathlib.Path(f'/proc/{os.getppid()}/stat')"
             ".read_text().rpartition(')')[2].split()[1]); print('err', file=sys.stderr); "
             "print(sys.argv[1:], sys.stdin.read()); sys.exit(5)")
    done = cli(env, "run", "--backend", "process", "--min-level", "1", "-c", probe, "x", "y",
               input=b"typed")
    assert done.returncode == 5, done.stderr
    parent, rest = done.stdout.decode().split("\n", 1)
    assert int(parent) == server.pid  # the server started the sandbox, not the client
    assert rest == "['x', 'y'] typed\n"
    assert done.stderr == b"err\n"


def test_the_clients_directory_and_files(served, tmp_path):
    """Relative paths (the script, --json, ./pyproject.toml) are the client's, not the server's."""
    require("bwrap")
    env, _, _ = served
    (tmp_path / "job.py").write_text("print('from the script')\n")
    (tmp_path / "pyproject.toml").write_text("[tool.detain]\ntimeout = 7\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "job.py", 0o644)
    done = cli(env, "run", "--backend", "bwrap", "--project-config", "--json", "out.json",
               "job.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["stdout"] == "from the script\n"
    assert result["policy"]["limits"]["timeout"] == 7
    assert b"applied timeout = 7" in done.stderr


def test_second_run_uses_a_warm_spare(served):
    require("bwrap")
    env, _, private = served
    first = cli(env, "run", "--backend", "bwrap", "-c", "pass")
    assert first.returncode == 0, first.stderr
    deadline = time.monotonic() + 20
    while len([p for p in private.iterdir() if p.name.startswith("run-")]) != 1:
        assert time.monotonic() < deadline, "no spare was started for the policy"
        time.sleep(0.05)
    spare = next(p for p in private.iterdir() if p.name.startswith("run-"))
    second = cli(env, "run", "--backend", "bwrap", "-c", "print('warm')")
    assert second.stdout == b"warm\n", second.stderr
    deadline = time.monotonic() + 10
    while spare.exists():  # the spare ran this job; its remains go just after the answer
        assert time.monotonic() < deadline, "the spare was not the one used"
        time.sleep(0.05)


def test_errors_are_the_clis_own(served):
    env, _, _ = served
    usage = cli(env, "run", "--no-such-flag", "-c", "pass")
    assert usage.returncode == 2
    assert b"unrecognized arguments: --no-such-flag" in usage.stderr
    bad = cli(env, "run", "--memory", "lots", "-c", "pass")
    assert bad.returncode == 2
    assert bad.stderr.startswith(b"detain: error: command line: memory:")
    timeout = cli(env, "run", "--backend", "bwrap", "--timeout", "1", "-c", "while 1: pass")
    assert timeout.returncode == 124


def busy_client(env: dict[str, str]) -> subprocess.Popen:
    """A `detain run` through the server whose job has started and spins until ended."""
    client = subprocess.Popen([sys.executable, "-m", "detain", "run", "--backend", "bwrap",
                               "--timeout", "60", "-c", "print('started', flush=True)\n"
                               "while True: pass"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert client.stdout.readline() == b"started\n"
    return client


def test_interrupting_the_client_cancels_the_run(served):
    require("bwrap")
    env, server, _ = served
    client = busy_client(env)
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=10) == 130
    assert b"interrupted; the sandbox was removed" in client.stderr.read()
    assert server.poll() is None  # the server goes on serving
    again = cli(env, "run", "--backend", "bwrap", "-c", "print('next')")
    assert again.stdout == b"next\n", again.stderr


def test_stopping_the_server_cancels_the_run_in_hand(served):
    """SIGTERM while a run is in hand cancels that run (the client is told) and the server
    still stops cleanly, its spares and the run's remains removed."""
    require("bwrap")
    env, server, private = served
    client = busy_client(env)
    assert "stopped" in stop_server(server, env)
    assert client.wait(timeout=10) == 130
    assert b"detain serve was stopped during this run" in client.stderr.read()
    assert leftovers(private, {server.pid}) == {}


def test_without_a_server_the_client_runs_alone(served):
    require("bwrap")
    env, server, private = served
    server.kill()
    server.wait()
    assert (private / "serve.sock").exists()  # a stale socket, as a killed server leaves it
    alone = cli(env, "run", "--backend", "bwrap", "-c", "print('alone')")
    assert alone.returncode == 0 and alone.stdout == b"alone\n", alone.stderr
    replacement = start_server(env)  # takes the stale socket over
    try:
        assert cli(env, "run", "--backend", "bwrap", "-c", "pass").returncode == 0
    finally:
        stop_server(replacement, env)
    assert not (private / "serve.sock").exists()
    # the killed server's own spare is swept by the next run that starts
    cli(env, "run", "--backend", "bwrap", "-c", "pass")
    assert leftovers(private, {server.pid}) == {}


def test_one_server_per_state_dir(served):
    env, _, _ = served
    second = cli(env, "serve")
    assert second.returncode == 2
    assert b"another detain serve is already listening" in second.stderr


def test_the_socket_is_the_users_alone(served):
    _, _, private = served
    mode = (private / "serve.sock").stat().st_mode & 0o777
    assert mode == 0o600


def test_no_server_variable_keeps_the_cli_local(served):
    require("process")
    env, server, _ = served
    done = cli({**env, "DETAIN_NO_SERVER": "1"}, "run", "--backend", "process",
               "--min-level", "1", "-c", "import os; print(os.getppid())")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) != server.pid


def test_serve_help_names_the_opt_out():
    done = subprocess.run([sys.executable, "-m", "detain", "serve", "--help"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0
    assert b"DETAIN_NO_SERVER" in done.stdout


def test_a_closed_stdin_runs_without_the_server(served):
    """A closed standard stream cannot be handed over: the client runs the job itself."""
    require("process")
    env, server, _ = served
    done = subprocess.run([sys.executable, "-m", "detain", "run", "--backend", "process",
                           "--min-level", "1", "-c", "import os; print(os.getppid())"],
                          env=env, capture_output=True, timeout=120,
                          preexec_fn=lambda: os.close(0))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) != server.pid
