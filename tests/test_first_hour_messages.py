"""What a new user sees in the first hour (issue 16): exit statuses and detain's own lines.

Each test runs the CLI as a user does, on real sandboxes (bwrap), and reads stderr: a
timeout says which flag raises it, tracebacks show the job's frames only, a failure on a
warning under the strict profile names the profile that avoids it, a refusal suggests the
level that works, `--` and `--suggest-policy FILE` parse, copy-out lands a directory's
contents, and CPU time counts the processes the job started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import tomllib
from pathlib import Path

import pytest

from as_user import _readable_by, ensure_user, reachable_python
from conftest import REPO, ROOT, detain_cli, require

BWRAP = ("--backend", "bwrap")
# About 0.25 s of CPU in a child interpreter the job waits for.
CHILD_JOB = ("import subprocess, sys\n"
             "subprocess.run([sys.executable, '-c', 'x = 0\\nfor i in range(3_000_000): x += i'],"
             " check=True)\n")


@pytest.fixture
def job_dir(tmp_path):
    """A directory sandbox uids can read (tmp_path's parents are not theirs to traverse)."""
    path = Path(tempfile.mkdtemp(prefix="detain-first-hour-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    os.chmod(path, 0o644)
    return str(path)


def detain_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.startswith("detain: ")]


def test_run_timeout_says_which_flag_raises_it():
    require("bwrap")
    done = detain_cli("run", *BWRAP, "--timeout", "1", "-c", "import time; time.sleep(30)",
                      timeout=60)
    assert done.returncode == 124
    assert detain_lines(done.stderr) == [
        "detain: timed out after 1 s on bwrap (exit 124); raise the limit with --timeout "
        "SECONDS"], done.stderr


def test_pytest_timeout_says_so_and_counts_the_install(job_dir):
    require("bwrap")
    script(job_dir, "test_slow.py", "import time\ndef test_slow():\n    time.sleep(60)\n")
    done = detain_cli("pytest", *BWRAP, "--timeout", "4", str(job_dir), timeout=120)
    assert done.returncode == 124
    lines = [line for line in detain_lines(done.stderr)
             if not line.startswith("detain: verdict:")]  # the verdict ends every pytest run
    assert len(lines) == 1, done.stderr
    # pytest itself installs inside the sandbox, on the job's clock: the line says so
    assert re.fullmatch(r"detain: timed out after 4 s on bwrap \(exit 124\), "
                        r"(\d+\.\d s of it|still) installing requirements; raise the limit "
                        r"with --timeout SECONDS", lines[0]), lines


def test_memory_error_shows_only_the_jobs_frames(job_dir):
    require("bwrap")
    path = script(job_dir, "grow.py", "def grow():\n    return bytearray(10**15)\n\ngrow()\n")
    done = detain_cli("run", *BWRAP, path, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.startswith("Traceback (most recent call last):\n  File \"/detain/job/grow.py\""), err
    assert "MemoryError" in err and "launcher.py" not in err and "runpy" not in err, err


def test_failure_on_a_warning_names_the_profile_without_it(job_dir):
    require("bwrap")
    path = script(job_dir, "old.py", "import warnings\nwarnings.warn('old', DeprecationWarning)\n"
                                     "print('after')\n")
    strict = detain_cli("run", *BWRAP, path, timeout=60)
    assert strict.returncode == 1
    assert "runpy" not in strict.stderr.decode(), strict.stderr
    assert detain_lines(strict.stderr) == [
        "detain: this failed under -W error (strict profile), a warning turned into an error; "
        "`--profile isolated` runs without it"], strict.stderr
    isolated = detain_cli("run", *BWRAP, "--profile", "isolated", path, timeout=60)
    assert isolated.returncode == 0 and isolated.stdout == b"after\n", isolated.stderr
    assert not detain_lines(isolated.stderr)
    plain_failure = detain_cli("run", *BWRAP, "-c", "raise ValueError('mine')", timeout=60)
    assert plain_failure.returncode == 1 and not detain_lines(plain_failure.stderr)


def test_unclosed_file_is_one_warning_line(job_dir):
    require("bwrap")
    path = script(job_dir, "leaky.py", "open('/etc/hostname').read()\nprint('done')\n")
    done = detain_cli("run", *BWRAP, path, timeout=60)
    assert done.returncode == 0 and done.stdout == b"done\n"
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "/detain/job/leaky.py:1: ResourceWarning: unclosed file <_io.TextIOWrapper"), lines


def test_double_dash_and_suggest_policy_before_the_script(job_dir):
    require("bwrap")
    path = script(job_dir, "job.py", "print('hi')\n")
    policy = job_dir / "policy.toml"
    done = detain_cli("run", *BWRAP, "--suggest-policy", str(policy), "--", path, timeout=60)
    assert done.returncode == 0 and done.stdout == b"hi\n", done.stderr
    text = policy.read_text()
    assert "# measured: wall " in text, text
    data = tomllib.loads(text)
    assert data["timeout"] >= 10 and data["cpu"] >= 10, data  # headroom over a 0.1 s run
    again = detain_cli("run", *BWRAP, "--policy", str(policy), path, timeout=60)
    assert again.returncode == 0 and again.stdout == b"hi\n", again.stderr
    swallowed = detain_cli("run", *BWRAP, "--suggest-policy", path, timeout=60)
    assert swallowed.returncode == 2
    assert "--suggest-policy took" in swallowed.stderr.decode() and \
        len(swallowed.stderr.splitlines()) == 1, swallowed.stderr
    assert Path(path).read_text() == "print('hi')\n"


def test_copy_out_brings_a_directorys_contents(job_dir):
    require("bwrap")
    out = job_dir / "out"
    code = "import os\nos.mkdir('results')\nopen('results/out.txt', 'w').write('42')\n"
    done = detain_cli("run", *BWRAP, "--copy-out", f"results:{out}", "-c", code, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["out.txt"]
    assert (out / "out.txt").read_text() == "42"


def test_cpu_time_counts_the_jobs_children(tmp_path):
    require("bwrap")
    result_json = tmp_path / "result.json"
    done = detain_cli("run", *BWRAP, "--json", str(result_json), "-c", CHILD_JOB, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(result_json.read_text())["cpu_seconds"] >= 0.15


def as_ordinary_user(*args: str) -> subprocess.CompletedProcess:
    """`detain ARGS` run by an ordinary user (no cgroup of its own, no runsc, no micro-VM)."""
    if not ROOT:
        pytest.skip("running as another user needs root")
    python = reachable_python()
    paths = [str(REPO / "src"), sysconfig.get_paths()["purelib"]]
    if python is None:
        pytest.skip("no interpreter of this version outside /root for an ordinary user")
    user = ensure_user()
    if not all(_readable_by(user, path) for path in paths):
        pytest.skip("the checkout is not readable by an ordinary user")
    home = Path(tempfile.mkdtemp(prefix="detain-first-hour-home-"))
    try:
        os.chmod(home, 0o755)
        shutil.chown(home, user, user)
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1",
               "XDG_CACHE_HOME": str(home / "cache"), "DETAIN_STATE_DIR": str(home / "state"),
               "DETAIN_CONFIG": "", "DETAIN_NO_SERVER": "1"}
        return subprocess.run(
            ["runuser", "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
             python, "-m", "detain", *args], capture_output=True, timeout=120, cwd=home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_refusal_suggests_the_highest_level_that_runs():
    done = as_ordinary_user("run", "--min-level", "4", "-c", "pass")
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "no backend of level >= 4" in err, err
    assert "lower the bar with --min-level 2 (" in err and "--min-level 1" not in err, err


def test_cpu_time_counts_the_jobs_children_without_a_cgroup():
    done = as_ordinary_user("run", *BWRAP, "--json", "-", "-c", CHILD_JOB)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cpu_seconds"] >= 0.15, result
    if any(note.startswith("limits: memory 512M per process") for note in result["notes"]):
        assert any(note.startswith("cpu: ") and "in-process" in note
                   for note in result["notes"]), result["notes"]
