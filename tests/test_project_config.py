"""Who may configure a run: the caller fully, a project's own files only to tighten.

The review's reproduction (a project's `python = "tools/py"` executed on the host as root)
and its siblings, judged from the host: canary files, the backend that really ran, limits
that really applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import detain_cli, require
from detain.config import configure, load_policy
from detain.errors import PolicyError
from detain.policy import Policy

HOSTILE = """[tool.detain]
python = "tools/py"
backend = "process"
min_level = 1
copy_out = ["/scratch/cron.d:{escape}"]
mount = ["/:/mnt/host:rw"]
allow_host = ["example.org"]
env = {{ TOKEN = "x" }}
profile = "isolated"
wheelhouse = "."
timeout = 600
"""


def _hostile_project(root: Path, canary: Path, escape: Path) -> Path:
    project = root / "project"
    (project / "tools").mkdir(parents=True)
    (project / "pyproject.toml").write_text(HOSTILE.format(escape=escape))
    tool = project / "tools" / "py"
    tool.write_text(f"#!/bin/sh\nid > {canary}\nexec python3 \"$@\"\n")
    tool.chmod(0o755)
    return project


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "project-config"])
def test_a_project_cannot_run_a_host_program_or_weaken_its_sandbox(tmp_path, opt_in):
    require("bwrap")
    canary, escape = tmp_path / "PWNED", tmp_path / "escape"
    project = _hostile_project(tmp_path, canary, escape)
    code = "import os; os.makedirs('cron.d'); open('cron.d/job', 'w').write('x')"
    flags = ["--project-config"] if opt_in else []
    done = detain_cli("run", "--backend", "bwrap", *flags, "--json", str(tmp_path / "r.json"),
                      "-c", code, cwd=project)
    assert done.returncode == 0, done.stderr
    assert not canary.exists(), "a host program named by the project ran"
    assert not escape.exists(), "the project chose a copy-out destination"
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["backend"] == "bwrap"
    policy = result["policy"]
    assert policy["python"] is None and policy["mounts"] == [] and policy["copy_out"] == []
    assert policy["network"] == "none" and policy["env"] == [] and policy["min_level"] == 2
    assert policy["profile"] == "strict" and policy["limits"]["timeout"] == 30
    if opt_in:
        said = done.stderr.decode()
        assert "applied nothing" in said
        for key in ("python (names a host program)", "backend (only the caller",
                    "copy_out (names host paths)", "mount (names host paths)",
                    "min_level", "allow_host", "env", "profile", "wheelhouse",
                    "timeout = 600 (would loosen the caller's 30)"):
            assert key in said, (key, said)
    else:
        assert b"project config" not in done.stderr


def test_a_project_may_tighten_limits_and_cut_the_network(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.detain]\ntimeout = 1\nmemory = "100M"\nnetwork = "none"\n')
    policy, report = configure(overrides={"allow_host": ["example.org"], "memory": "300M"},
                               project_dir=tmp_path)
    assert policy.limits.wall_seconds == 1 and policy.limits.memory_bytes == 100 << 20
    assert policy.network == "none"
    assert report is not None and not report.refused
    assert report.applied == ["timeout = 1", "memory = 100M", "network = none"]


def test_a_project_tightened_timeout_really_ends_the_run(tmp_path):
    require("bwrap")
    (tmp_path / "pyproject.toml").write_text("[tool.detain]\ntimeout = 1\n")
    job = ["-c", "import time; time.sleep(5)"]
    done = detain_cli("run", "--backend", "bwrap", "--project-config", *job, cwd=tmp_path)
    assert done.returncode == 124, done.stderr
    assert b"applied timeout = 1" in done.stderr


def test_by_default_nothing_of_the_project_is_read(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.detain]\ntimeout = 1\nbackend = 'nope'\n")
    assert configure(project_dir=None) == (Policy(), None)
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_policy() == Policy()
    finally:
        os.chdir(previous)


def test_a_broken_or_odd_project_table_is_refused_not_fatal(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.detain]\nmemory = "lots"\n"\\u001b[2J" = 1\nnetwork = {allow = ["x.org"]}\n')
    policy, report = configure(project_dir=tmp_path)
    assert policy == Policy()
    assert report is not None and not report.applied
    assert len(report.refused) == 3
    assert "\x1b" not in report.describe()


def test_the_users_own_config_is_trusted_but_must_be_theirs(tmp_path, monkeypatch):
    config = tmp_path / "policy.toml"
    config.write_text('timeout = 3\nmin_level = 1\n')
    monkeypatch.setenv("DETAIN_CONFIG", str(config))
    policy = load_policy()
    assert policy.limits.wall_seconds == 3 and policy.min_level == 1
    config.chmod(0o666)
    with pytest.raises(PolicyError, match="others can write"):
        load_policy()
    monkeypatch.delenv("DETAIN_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "detain").mkdir()
    (tmp_path / "detain" / "policy.toml").write_text("timeout = 4\n")
    assert load_policy().limits.wall_seconds == 4


def test_sandbox_paths_cannot_smuggle_engine_options():
    with pytest.raises(PolicyError, match="may not contain"):
        Policy().merge({"mount": ["/tmp:/mnt/x,source=/etc"]}, "test")
    with pytest.raises(PolicyError, match="may not contain"):
        Policy().merge({"copy_out": ["/scratch/a\nb:/tmp"]}, "test")


def _suite(root: Path) -> Path:
    project = root / "suite"
    project.mkdir()
    (project / "test_ok.py").write_text("def test_ok():\n    pass\n")
    return project


def test_a_projects_modules_never_run_on_the_host(tmp_path):
    """`python -m pip` from the checkout once imported the project's pip.py as the caller."""
    require("bwrap")
    project = _suite(tmp_path)
    canary = tmp_path / "PWNED"
    hook = f"open({str(canary)!r}, 'a').write(__name__ + '\\n')\n"
    for name in ("pip.py", "re.py", "runpy.py", "sitecustomize.py"):
        (project / name).write_text(hook)
    # The console script, as users run it (`python -m detain` would itself put the
    # working directory on sys.path, the caller's own choice).
    script = str(Path(sys.executable).with_name("detain"))
    done = subprocess.run([script, "pytest", "--backend", "bwrap"], cwd=project,
                          capture_output=True)
    assert not canary.exists(), canary.read_text()
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("kind", ["symlink", "huge", "fifo"])
def test_a_projects_requirements_file_is_read_as_hostile_data(tmp_path, kind):
    project = _suite(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("ghp-detain-secret-token\n")
    secret.chmod(0o600)
    requirements = project / "requirements.txt"
    if kind == "symlink":
        requirements.symlink_to(secret)
    elif kind == "huge":
        requirements.write_text("attrs\n" * 400_000)
    else:
        os.mkfifo(requirements)
    done = detain_cli("pytest", "--backend", "bwrap", cwd=project, timeout=120)
    assert b"ghp-detain-secret-token" not in done.stdout + done.stderr
    assert b"Traceback" not in done.stderr
    if kind == "fifo":  # not a regular file: not a requirements list
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        assert done.returncode == 2 and done.stderr.count(b"\n") == 1, done.stderr
        assert (b"is a symlink" if kind == "symlink" else b"larger than") in done.stderr


def test_a_symlinked_script_is_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("password: detain-secret\n")
    secret.chmod(0o600)
    (tmp_path / "main.py").symlink_to(secret)
    done = detain_cli("run", "--backend", "bwrap", "main.py", cwd=tmp_path)
    assert done.returncode == 2 and b"is a symlink" in done.stderr
    assert b"detain-secret" not in done.stdout + done.stderr


def test_reserved_sandbox_paths_cannot_hide_behind_extra_slashes(tmp_path):
    for target in ("//tmp", "//proc", "///etc", "//scratch", "//detain/job"):
        with pytest.raises(PolicyError, match="managed by detain"):
            Policy().merge({"mount": [f"{tmp_path}:{target}:rw"]}, "test")


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's symlink needs root to plant")
def test_a_host_path_another_user_can_redirect_is_refused(tmp_path):
    from as_user import ensure_user

    user = ensure_user()
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    planted = tmp_path / "results"
    planted.symlink_to(victim)
    os.lchown(planted, *(int(x) for x in subprocess.run(
        ["id", "-u", user], capture_output=True, text=True).stdout.split()), -1)
    with pytest.raises(PolicyError, match="another user's symlink"):
        Policy().merge({"copy_out": [f"out:{planted}"]}, "test")
    with pytest.raises(PolicyError, match="another user's symlink"):
        Policy().merge({"mount": [f"{planted}:/mnt/in"]}, "test")
    mine = tmp_path / "mine"
    mine.symlink_to(victim)
    assert Policy().merge({"copy_out": [f"out:{mine}/new"]}, "test").copy_out[0].host_dir \
        == victim / "new"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PolicyError, match="writable by another user"):
        Policy().merge({"copy_out": [f"out:{shared}"]}, "test")
