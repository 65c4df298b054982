"""`pytest --detain`: the session runs inside detain, and nothing of the project on the host.

The project in these tests is hostile: its conftest.py and a module shadowing one that
detain imports write a canary file on the host if they ever run there, and its pytest
configuration tries to choose detain's backend. pytest is started as a user starts it,
through the `pytest` command of detain's venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from detain import pytest_plugin as plugin
from detain.pytest_plugin import split_args

PYTEST = Path(sys.executable).with_name("pytest")

HOSTILE_CODE = '''
import pathlib
try:
    pathlib.Path({canary!r}).write_text("project code ran here")
except OSError:
    pass
'''

CONFTEST = HOSTILE_CODE + '''
import pytest

def pytest_addoption(parser):
    # The sandbox has no detain plugin: accept the options the project's addopts names.
    parser.addoption("--detain-backend")
    parser.addoption("--detain-min-level")

@pytest.fixture
def from_conftest():
    return "conftest.py loaded"
'''

TESTS = '''
import os

def test_inside(from_conftest):
    assert from_conftest == "conftest.py loaded"
    assert os.path.isdir("/mnt/project")  # the project's read-only mount: only in the sandbox

def test_fails():
    assert 1 + 1 == 3
'''

PYPROJECT = '''
[tool.pytest.ini_options]
pythonpath = ["."]
addopts = "--detain-backend=process --detain-min-level=1"

[tool.detain]
backend = "process"
min_level = 1
'''


def hostile_project(root: Path, canary: Path) -> Path:
    root.mkdir()
    (root / "conftest.py").write_text(CONFTEST.format(canary=str(canary)))
    (root / "secrets.py").write_text(HOSTILE_CODE.format(canary=str(canary)))  # detain imports it
    (root / "test_sample.py").write_text(TESTS)
    (root / "pyproject.toml").write_text(PYPROJECT)
    return root


def pytest_in(project: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([str(PYTEST), "-p", "no:randomly", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_split_args_takes_out_only_detains_options():
    assert split_args(["-q", "--detain", "--detain-backend", "bwrap", "--detain-timeout=60",
                       "--detain-option=--summary", "-k", "x", "--", "--detain"]) == (
        True, ["--backend", "bwrap", "--timeout", "60", "--summary"],
        ["-q", "-k", "x", "--", "--detain"])
    assert split_args(["-q", "tests"]) == (False, [], ["-q", "tests"])


def test_loading_the_plugin_imports_nothing_new():
    code = ("import sys, pytest; before = set(sys.modules); import detain.pytest_plugin; "
            "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "['detain', 'detain.pytest_plugin']"


def test_without_detain_pytest_runs_as_usual_even_if_the_project_asks(tmp_path):
    """A plain `pytest` is the caller's choice to run the project on the host: the plugin
    stays out of it, and the project's own addopts cannot switch detain on."""
    canary = tmp_path / "canary"
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(HOSTILE_CODE.format(canary=str(canary)))
    (project / "test_plain.py").write_text("def test_plain():\n    pass\n")
    (project / "pytest.ini").write_text("[pytest]\naddopts = --detain --detain-backend=x\n")
    done = pytest_in(project, "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "detain:" not in done.stderr
    assert canary.exists()  # plain pytest imports conftest.py on the host, as always


def test_help_with_detain_imports_no_conftest(tmp_path):
    canary = tmp_path / "canary"
    project = hostile_project(tmp_path / "project", canary)
    done = pytest_in(project, "--detain", "--help")
    assert done.returncode == 0, done.stderr
    assert "--detain-backend=NAME" in done.stdout
    assert not canary.exists()


@pytest.mark.slow
def test_hostile_project_runs_only_inside_the_sandbox(tmp_path):
    require("bwrap")
    canary = tmp_path / "canary"
    project = hostile_project(tmp_path / "project", canary)
    policy = tmp_path / "policy.toml"
    policy.write_text('backend = "bwrap"\n')  # the caller's choice, not the project's
    policy.chmod(0o600)
    done = pytest_in(project, "--detain", f"--detain-policy={policy}", "--detain-timeout",
                     "120", "-q", timeout=180)
    assert not canary.exists(), "the project's code ran on the host"
    assert done.returncode == 1, done.stdout + done.stderr  # pytest's own status, inside
    assert "1 failed, 1 passed" in done.stdout
    assert "detain: pytest exited with status 1 on bwrap" in done.stderr


@pytest.mark.slow
def test_project_addopts_cannot_turn_the_session_back_to_the_host(tmp_path):
    """`-V` or `--debug=PATH` in the project's addopts: the takeover comes first, so neither
    the version-only path (which once ran the whole suite on the host) nor pytest's debug
    file happens here."""
    require("bwrap")
    canary = tmp_path / "canary"
    debug = Path(f"/tmp/detain-plugin-debug-{os.getpid()}.log")  # exists inside, in its /tmp
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_host.py").write_text(HOSTILE_CODE.format(canary=str(canary))
                                          + "\ndef test_one():\n    pass\n")
    (project / "pytest.ini").write_text(f"[pytest]\naddopts = -V --debug={debug}\n")
    done = pytest_in(project, "--detain", "--detain-backend=bwrap", "-q", timeout=180)
    try:
        assert not canary.exists(), "the project's tests ran on the host"
        assert not debug.exists(), "pytest wrote its debug file on the host"
        assert "detain: pytest exited with status 0 on bwrap" in done.stderr, done.stderr
    finally:
        debug.unlink(missing_ok=True)


def test_project_code_pytest_imported_first_is_refused(tmp_path):
    """pytest imports `-p` plugins of the project's addopts (on its pythonpath) before any
    entry-point plugin: that code ran on the host, and the run is refused, not reported."""
    canary = tmp_path / "canary"
    project = tmp_path / "project"
    project.mkdir()
    (project / "evil.py").write_text(HOSTILE_CODE.format(canary=str(canary)))
    (project / "test_one.py").write_text("def test_one():\n    pass\n")
    (project / "pytest.ini").write_text("[pytest]\npythonpath = .\naddopts = -p evil\n")
    done = pytest_in(project, "--detain", "--detain-backend=bwrap", "-q")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pytest imported evil from" in done.stderr and "refusing to go on" in done.stderr
    assert "passed" not in done.stdout


@pytest.mark.slow
def test_the_plugin_installed_in_the_sandbox_stays_out(tmp_path):
    """The sandbox's pytest gets `-p no:detain`: should the project's environment have
    detain too (here a dist-info of its own, found through the project dir on sys.path),
    its plugin is blocked there, so a session can never hand itself to detain again."""
    require("bwrap")
    project = tmp_path / "project"
    (project / "detain").mkdir(parents=True)
    (project / "detain" / "__init__.py").write_text("")
    (project / "detain" / "pytest_plugin.py").write_text(Path(plugin.__file__).read_text())
    info = project / "detain-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: detain\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[pytest11]\ndetain = detain.pytest_plugin\n")
    (project / "test_inside.py").write_text('''
import importlib.metadata

def test_detain_plugin_is_blocked(pytestconfig):
    assert "detain" in [ep.name for ep in importlib.metadata.entry_points(group="pytest11")]
    assert pytestconfig.pluginmanager.is_blocked("detain")
''')
    done = pytest_in(project, "--detain", "--detain-backend=bwrap", "-q", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
