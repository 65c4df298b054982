"""Run part of this test suite again with detain itself running as an ordinary user.

Shared by the unprivileged variants of the bwrap, landlock and rootless-podman tests. The
user is created if missing; the interpreter must be reachable by it (this kind of host
keeps pyenv under a 0700 /root, so Debian's python3 of the same version is used); and when
the checkout or its virtualenv is not readable by others (a clone under /root), the
sources and installed packages are copied to a world-readable temp dir first.
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

USER = "detain-unpriv"
REPO = Path(__file__).resolve().parent.parent


def reachable_python() -> str | None:
    """A python3 of this minor version that an unrelated user can execute."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.access(candidate, os.X_OK) and Path(os.path.realpath(candidate)).parts[1] != "root":
            return candidate
    return None


def ensure_user(subids: bool = False) -> str:
    if not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("useradd/runuser are not installed")
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", USER], check=True)
    if subids and f"\n{USER}:" not in "\n" + Path("/etc/subuid").read_text():
        subprocess.run(["usermod", "--add-subuids", "300000-365535", "--add-subgids",
                        "300000-365535", USER], check=True)
    return USER


def _readable_by(user: str, path: str) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", "test", "-r", path]).returncode == 0


def run_tests_as_user(keyword: str, tests: list[str], *, subids: bool = False,
                      timeout: int = 900, home_base: str | None = None) -> str:
    """Run `pytest -k keyword tests…` as the user; fails on any failure or skip.

    `home_base`: where the user's temporary home goes (default /tmp); the battery needs
    one outside /tmp, which sandboxes replace, to show its bait dir at the same path."""
    python = reachable_python()
    if python is None:
        pytest.skip("no interpreter of this version outside /root for an ordinary user")
    user = ensure_user(subids)
    home = Path(tempfile.mkdtemp(prefix="detain-unpriv-home-", dir=home_base))
    os.chmod(home, 0o755)
    shutil.chown(home, user, user)
    try:
        workdir, paths = REPO, [str(REPO / "src"), sysconfig.get_paths()["purelib"]]
        if not all(_readable_by(user, path) for path in paths):
            workdir = home / "checkout"
            for name in ("src", "tests", "pyproject.toml"):
                copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
                copy(REPO / name, workdir / name)
            shutil.copytree(paths[1], home / "site-packages", symlinks=True)
            paths = [str(workdir / "src"), str(home / "site-packages")]
            subprocess.run(["chmod", "-R", "a+rX", str(home)], check=True)
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join(paths), "XDG_CACHE_HOME": str(home / ".cache"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            ["runuser", "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
             python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", keyword, "-x",
             "--basetemp", str(home / "pytest"), *tests],
            cwd=workdir, capture_output=True, text=True, timeout=timeout)
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert " passed" in summary and "skipped" not in summary.split("passed")[0], summary
        return summary
    finally:
        if subids:
            subprocess.run([shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--",
                            "podman", "system", "reset",
                            "--force"], cwd="/", capture_output=True,
                           env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        shutil.rmtree(home, ignore_errors=True)
