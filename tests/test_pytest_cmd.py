"""`detain pytest`: a project's suite runs inside the sandbox, events tied to test ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import detain_cli, require

pytestmark = pytest.mark.slow

TESTS = '''
import os, urllib.request

def test_passes():
    with open("written-by-test.txt", "w") as handle:
        handle.write("x")

def test_fails_after_phoning_home():
    try:
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=5)
    except OSError:
        pass
    assert 1 + 1 == 3
'''


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_sample.py").write_text(TESTS)
    return root


def test_suite_runs_inside_and_returns_pytests_status(project, tmp_path):
    require("bwrap")
    out = tmp_path / "result.json"
    done = detain_cli("pytest", "--backend", "bwrap", "--allow-host", "example.org",
                      "--json", str(out), str(project), "--", "-q", "-p", "no:randomly",
                      timeout=180)
    assert done.returncode == 1, done.stderr.decode()[-2000:]
    assert b"1 failed, 1 passed" in done.stdout
    result = json.loads(out.read_text())
    behaviour = result["behaviour"]
    outcomes = {t["nodeid"]: t["outcome"] for t in behaviour["tests"]}
    assert outcomes == {"tests/test_sample.py::test_passes": "passed",
                        "tests/test_sample.py::test_fails_after_phoning_home": "failed"}
    by_test = {}
    for event in behaviour["events"]:
        by_test.setdefault(event.get("test"), []).append(event)
    writes = [e for e in by_test["tests/test_sample.py::test_passes"]
              if e["category"] == "file-write"]
    assert any("written-by-test.txt" in str(e["detail"].get("path")) for e in writes)
    proxied = [e for e in by_test["tests/test_sample.py::test_fails_after_phoning_home"]
               if e["event"] == "proxy.connect"]
    assert proxied and proxied[0]["detail"]["allowed"] is False
    assert proxied[0]["provenance"] == "kernel/runtime"
    assert not (project / "written-by-test.txt").exists()


def test_selected_passing_test_exits_zero(project):
    require("bwrap")
    done = detain_cli("pytest", "--backend", "bwrap", str(project), "--", "-q", "-k",
                      "passes", timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_fail_on_gates_a_passing_suite(project):
    """`--fail-on` works on `detain pytest` as on `detain run` (the CI example relies on it)."""
    require("bwrap")
    done = detain_cli("pytest", "--backend", "bwrap", "--fail-on", "write", str(project), "--",
                      "-q", "-k", "passes", timeout=180)
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    assert b"--fail-on write: seen in this run" in done.stderr
