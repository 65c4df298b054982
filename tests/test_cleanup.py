"""DESIGN rule 2: after any run (finished, timed out, killed, or detain killed) nothing is left."""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

import detain
from conftest import leftovers, run
from detain.backends import BACKENDS


def test_many_runs_leave_nothing(backend, state_dir):
    runs = {"process": 200, "bwrap": 200, "landlock": 200, "microvm": 5}.get(backend, 20)
    box = detain.Sandbox(detain.Policy().merge(
        {"backend": backend, "min_level": BACKENDS[backend].level, "timeout": 20}, "test"))
    codes = ["print('ok')", "import os; os.fork(); print('forked')",
             "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(30)'], start_new_session=True); print('left a child')"]
    for number in range(runs):
        result = box.run(detain.Job.code(codes[number % len(codes)]))
        assert result.error is None, result.error
    time.sleep(0.3)
    assert not leftovers(state_dir)


def test_timed_out_run_with_escaped_children_leaves_nothing(backend, state_dir):
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(60)\ntime.sleep(60)")
    result = run(backend, code, timeout=1)
    assert result.status == 124
    time.sleep(0.3)
    assert not leftovers(state_dir)


def _wait_for_first_line(cli, expected=b"started\n", deadline=60.0):
    """Wait for the job's own first stdout line, read from the CLI child's stdout pipe: the
    job has started on every backend, even one whose scratch dir is not on this host (a VM)."""
    cli_out = cli.stdout.fileno()
    os.set_blocking(cli_out, False)
    seen = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end and not seen.startswith(expected):
        ready, _, _ = select.select([cli_out], [], [], 0.1)
        chunk = os.read(cli_out, 4096) if ready else b""
        if ready and not chunk:
            break
        seen += chunk
    assert seen.startswith(expected), f"the sandbox never started (stdout: {seen!r})"


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killing_detain_mid_run_leaves_nothing_after_next_start(backend, state_dir, how):
    code = ("import os, time\nprint('started', flush=True)\nif os.fork() == 0:\n"
            "    os.setsid()\n    time.sleep(120)\ntime.sleep(120)")
    cli = subprocess.Popen([sys.executable, "-m", "detain", "run", "--backend", backend,
                            "--min-level", str(BACKENDS[backend].level), "-c", code],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        _wait_for_first_line(cli)
        cli.send_signal(how)
        cli.wait(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        cli.stdout.close()
    # The next start sweeps whatever the killed detain could not remove itself.
    assert run(backend, "print('next')").stdout == b"next\n"
    time.sleep(0.3)
    assert not leftovers(state_dir, {cli.pid, os.getpid()})
