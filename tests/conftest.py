"""Shared fixtures: every generic test runs, for real, on every backend this host can start.

A backend whose probe fails is skipped with the probe's own reason; on the project's CI
machine (Debian 12, root) every Linux backend but `jail` is expected to run.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import detain
from detain.backends import BACKENDS, probe

# RestrictedPython refuses most of the probes' code and venv does not isolate: both have
# their own tests; every other Linux backend must honour the whole contract.
CONTRACT_BACKENDS = [n for n, e in BACKENDS.items()
                     if e.system == "Linux" and n not in ("venv", "restricted")]
CONTAINING_BACKENDS = [n for n in CONTRACT_BACKENDS if BACKENDS[n].level >= 2]

ROOT = os.geteuid() == 0
# A private dockerd for the session, when root and docker.io is installed (else docker skips).
pytest_plugins = ["conftest_containers"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def state_dir():
    """A private state dir per session, reachable by sandbox uids (so not under tmp_path)."""
    base = Path("/run" if ROOT else "/tmp") / f"detain-test-{os.getpid()}"
    base.mkdir(mode=0o711, exist_ok=True)
    os.environ["DETAIN_STATE_DIR"] = str(base)
    yield base
    shutil.rmtree(base, ignore_errors=True)


_PROBES: dict[str, object] = {}


def require(backend: str) -> None:
    if backend not in _PROBES:
        _PROBES[backend] = probe(backend)
    result = _PROBES[backend]
    if not result.available:
        pytest.skip(f"{backend} cannot run here: {result.reason}")


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend(request) -> str:
    require(request.param)
    return request.param


@pytest.fixture(params=CONTAINING_BACKENDS)
def containing_backend(request) -> str:
    require(request.param)
    return request.param


def run(backend: str, code: str, *args: str, stdin: bytes | None = None, **settings):
    """Run `code` on `backend`, accepting its level whatever it is."""
    settings.setdefault("min_level", BACKENDS[backend].level)
    return detain.run(None, *args, code=code, backend=backend, stdin=stdin, **settings)


def leftovers(state: Path, pids: set[int] | None = None) -> dict[str, list[str]]:
    """Anything a run of this test session left behind: dirs, mounts, cgroups, processes."""
    prefixes = tuple(f"run-{pid}-" for pid in (pids or {os.getpid()}))
    found: dict[str, list[str]] = {"run_dirs": [], "mounts": [], "cgroups": [], "processes": []}
    found["run_dirs"] = [p.name for p in state.iterdir() if p.name.startswith("run-")]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if str(state) in line:
            found["mounts"].append(line.split()[4])
    for group in Path("/sys/fs/cgroup").glob("*/detain/run-*"):
        if group.name.startswith(prefixes):
            found["cgroups"].append(str(group))
    for group in Path("/sys/fs/cgroup").glob("detain/run-*"):
        if group.name.startswith(prefixes):
            found["cgroups"].append(str(group))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if stat and stat[0] != "Z" and any(f"/detain/{p}" in cgroup for p in prefixes):
            found["processes"].append(entry.name)
    return {k: v for k, v in found.items() if v}


def detain_cli(*args: str, **kwargs):
    """The CLI exactly as a user runs it, in a child process."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "detain", *args], capture_output=True,
                          **kwargs)
