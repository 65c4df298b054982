"""The CLI's own commands: doctor, the example of `make run`, --python, help."""

import json
import os
import sys

import pytest

from conftest import REPO, detain_cli, require, run
from detain.backends import BACKENDS


def test_doctor_lists_every_backend_of_the_design():
    done = detain_cli("doctor", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {row["backend"]: row for row in data["backends"]}
    assert set(rows) == set(BACKENDS) >= {"venv", "process", "restricted", "landlock", "bwrap",
                                           "podman", "docker", "jail", "gvisor", "microvm"}
    for row in rows.values():
        assert row["available"] or row["reason"], row
        assert row["level"] == BACKENDS[row["backend"]].level
    assert rows["bwrap"]["available"], rows["bwrap"]["reason"]
    assert not rows["jail"]["available"] and "FreeBSD" in rows["jail"]["reason"]
    assert data["auto"] is not None


def test_doctor_table_renders():
    done = detain_cli("doctor")
    assert done.returncode == 0
    for name in BACKENDS:
        assert name.encode() in done.stdout


def test_make_run_example_prints_its_output():
    done = detain_cli("run", str(REPO / "examples" / "hello.py"), cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert b"hello from inside the sandbox" in done.stdout
    assert b"read /etc/shadow: blocked" in done.stdout
    assert b"network: blocked" in done.stdout


@pytest.mark.parametrize("command", ["run", "doctor"])
def test_help_matches_the_commands(command):
    done = detain_cli(command, "--help")
    assert done.returncode == 0 and b"usage:" in done.stdout


def test_another_interpreter_with_python_flag(backend):
    other = "/usr/bin/python3"
    if not os.access(other, os.X_OK) or os.path.realpath(other) == os.path.realpath(sys.executable):
        pytest.skip("no second interpreter on this host")
    result = run(backend, "import sys; print(sys.executable, sys.prefix)", python=other)
    assert result.status == 0, (result.stderr, result.error)
    assert result.stdout.split()[1] == b"/usr"
    assert result.assurance["interpreter"]["path"] == os.path.realpath(other)


def test_a_reader_that_goes_away_is_no_traceback(state_dir):
    """`detain run … | head -1`: the rest of the job's output is dropped, the run ends
    and cleans up as usual, and nothing but the job's own output is printed."""
    import subprocess

    require("bwrap")
    proc = subprocess.Popen([sys.executable, "-m", "detain", "run", "--backend", "bwrap", "-c",
                             "for i in range(200000): print(i)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"0\n"
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and b"Traceback" not in stderr, stderr
