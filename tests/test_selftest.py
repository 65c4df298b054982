"""The escape battery, run for real: on every backend that starts here, and on the
deliberately weak control, where every group of probes must see at least one escape
(a probe class that can never fail proves nothing)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import pytest

from conftest import detain_cli, require
from detain.backends import BACKENDS
from detain.selftest import GROUPS, PROBES, report, resolve
from detain.selftest.bait import Session
from detain.selftest.model import CONTAINED, ERROR, ESCAPED, NOT_APPLICABLE, Verdict
from detain.selftest.runner import Target, TargetReport, run_target
from detain.selftest.weak import BACKEND as WEAK

LINUX_BACKENDS = [n for n, e in BACKENDS.items() if e.system == "Linux"]


@pytest.fixture
def session():
    # Per test: the session puts bait in this process's environment while it lives.
    with Session() as current:
        yield current


def _by_status(result: TargetReport, status: str) -> dict[str, str]:
    return {pid: v.detail for pid, v in result.verdicts.items() if v.status == status}


def test_the_battery_has_every_group_and_at_least_40_probes():
    assert len(PROBES) >= 40
    assert len({p.id for p in PROBES}) == len(PROBES)
    assert {p.group for p in PROBES} == set(GROUPS)
    assert {p.id for p in PROBES if p.dangerous} >= {
        "processes.fork-bomb", "processes.kill-all", "resources.output-flood"}


@pytest.mark.slow
@pytest.mark.parametrize("name", LINUX_BACKENDS)
def test_battery_on_every_backend_that_runs_here(name, session):
    require(name)
    target = resolve([name])[0][0]
    result = run_target(target, session)
    assert not _by_status(result, ERROR), _by_status(result, ERROR)
    if target.level >= 2:
        assert not _by_status(result, ESCAPED), _by_status(result, ESCAPED)
        gated = [p.id for p in PROBES if p.dangerous]
        assert all(result.verdicts[pid].status != NOT_APPLICABLE
                   or "not run" not in result.verdicts[pid].detail for pid in gated)
    print(f"\n{name}: {report.score(result)[0]}/{report.score(result)[1]} contained "
          f"in {result.seconds} s; escapes: {sorted(_by_status(result, ESCAPED))}")


@pytest.mark.slow
def test_weak_configuration_lets_every_group_out(session):
    require("bwrap")
    result = run_target(Target(WEAK.name, WEAK.level, WEAK), session)
    assert not _by_status(result, ERROR), _by_status(result, ERROR)
    escaped = _by_status(result, ESCAPED)
    for group in GROUPS:
        assert any(pid.startswith(group + ".") for pid in escaped), \
            f"no {group} probe saw the weak configuration's escape"
    # Level 0, and leaking: the dangerous probes were never handed to it.
    for probe in (p for p in PROBES if p.dangerous):
        assert result.verdicts[probe.id].status == NOT_APPLICABLE
        assert result.verdicts[probe.id].detail.startswith("not run")
    silent = sorted(pid for pid, v in result.verdicts.items() if v.status == CONTAINED)
    print(f"\nweak control: {len(escaped)} escapes; contained even here: {silent}")


def test_dangerous_probes_wait_for_a_clean_harmless_run():
    from detain.selftest.runner import _gate

    leaky = TargetReport(Target("x", 2, None), {"filesystem.a": Verdict(ESCAPED, "out")})
    clean = TargetReport(Target("x", 2, None), {"filesystem.a": Verdict(CONTAINED)})
    judged = TargetReport(Target("x", 2, None), {"filesystem.a": Verdict(ERROR, "bug")})
    assert _gate(leaky.target, leaky) and _gate(judged.target, judged)
    assert _gate(clean.target, clean) is None
    assert _gate(Target("venv", 0, None), clean)


def test_exit_rule_fails_only_leaky_backends_of_level_2_or_more():
    weak = TargetReport(Target("process", 1, None), {"a.b": Verdict(ESCAPED, "out")})
    strong = TargetReport(Target("bwrap", 2, None), {"a.b": Verdict(CONTAINED)})
    assert report.failed([weak, strong]) == []
    strong.verdicts["a.c"] = Verdict(ESCAPED, "out")
    assert report.failed([weak, strong]) == ["bwrap"]


@pytest.mark.slow
def test_cli_prints_json_and_junit(tmp_path):
    require("process")
    junit = tmp_path / "selftest.xml"
    done = detain_cli("selftest", "--backend", "process", "--json", "--junit", str(junit),
                      timeout=300)
    assert done.returncode == 0, done.stderr  # level 1 escapes do not fail the run
    data = json.loads(done.stdout)
    (row,) = data["backends"]
    assert row["backend"] == "process" and len(row["verdicts"]) == len(PROBES)
    assert row["escaped"] > 0  # unprivileged or not, level 1 leaks something
    suites = ElementTree.parse(junit).getroot()
    assert int(suites[0].get("tests")) == len(PROBES)
    assert int(suites[0].get("failures")) == row["escaped"]


def test_cli_rejects_an_unknown_backend():
    done = detain_cli("selftest", "--backend", "nope", timeout=60)
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and b"Traceback" not in done.stderr
