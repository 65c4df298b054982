"""The bwrap containment tests, again, with detain running as an ordinary user.

The test creates that user, then runs the relevant test files in a child pytest under
`runuser`, with an interpreter the user can reach (/root is 0700 on this kind of host) and
this checkout's dependencies on PYTHONPATH.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, ROOT

USER = "detain-unpriv"
pytestmark = pytest.mark.skipif(not ROOT, reason="creating a user needs root")


def _reachable_python() -> str | None:
    """A python3 of this minor version that an unrelated user can execute."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.access(candidate, os.X_OK) and Path(os.path.realpath(candidate)).parts[1] != "root":
            return candidate
    return None


@pytest.fixture(scope="module")
def user():
    if not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("useradd/runuser are not installed")
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        USER], check=True)
    return USER


@pytest.fixture
def home(user):
    """A home the user owns, outside pytest's own 0700 temp tree."""
    path = Path(tempfile.mkdtemp(prefix="detain-unpriv-home-"))
    os.chmod(path, 0o755)
    shutil.chown(path, user, user)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_bwrap_containment_as_unprivileged_user(user, home):
    python = _reachable_python()
    if python is None:
        pytest.skip("no interpreter of this version outside /root for the unprivileged user")
    site = sysconfig.get_paths()["purelib"]
    paths = [str(REPO / "src"), site]
    for path in paths:
        probe = subprocess.run(["runuser", "-u", user, "--", "test", "-r", path])
        if probe.returncode != 0:
            pytest.skip(f"{path} is not readable by an unprivileged user in this checkout")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join(paths), "XDG_CACHE_HOME": str(home / ".cache"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    tests = ["tests/test_containment.py", "tests/test_limits.py", "tests/test_basics.py",
             "tests/test_files.py"]
    done = subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
         python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "bwrap", "-x",
         "--basetemp", str(home / "pytest"), *tests],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary.split("passed")[0], summary
