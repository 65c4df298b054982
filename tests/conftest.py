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

# Under TCG a micro-VM run costs about a second, a new interpreter profile a cold boot: in
# the default run it takes the tests that matter for it (containment, limits, cleanup,
# files, events of the suspicious fixture, the battery) and leaves out those that only
# exercise the shared launcher again. `make test-all` (DETAIN_TEST_EVERY_CASE=1) runs all.
SLOW_BACKEND_SKIPS = {
    "microvm": (
        "test_basics.py::test_arguments_reach_sys_argv", "test_basics.py::test_module",
        "test_basics.py::test_no_stdin_reads_eof", "test_basics.py::test_script_with_arguments",
        "test_basics.py::test_unicode_and_invalid_utf8_output",
        "test_isolated_mode.py::test_module_", "test_isolated_mode.py::test_profiles_",
        "test_isolated_mode.py::test_strict_profile_", "test_isolated_mode.py::test_user_site_",
        "test_events.py::test_flood_", "test_events.py::test_forged_",
        "test_events.py::test_launcher_frames_", "test_events.py::test_missing_summary_",
        "test_events.py::test_raw_channel_flood_",
        "test_report.py::test_cli_report_", "test_report.py::test_sarif_",
        "test_report.py::test_limit_kills_", "test_cli.py::test_another_interpreter_",
        "test_cleanup.py::test_killing_detain_mid_run_leaves_nothing_after_next_start[microvm-15]",
    ),
}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DETAIN_TEST_EVERY_CASE"):
        return
    kept, dropped = [], []
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        skips = SLOW_BACKEND_SKIPS.get(backend, ())
        name = item.nodeid.split("/")[-1]
        (dropped if any(name.startswith(s) for s in skips) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


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
    os.environ["DETAIN_CONFIG"] = ""  # a developer's own policy.toml must not change the suite
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
