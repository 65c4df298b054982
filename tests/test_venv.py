"""The venv backend: a fresh throw-away venv, never chosen by itself, and honest about it."""

import pytest

import detain
from conftest import ROOT, leftovers, require, run
from detain.backends import choose
from detain.errors import BackendUnavailable


@pytest.fixture(autouse=True)
def venv_available():
    require("venv")


def test_it_needs_min_level_0():
    with pytest.raises(BackendUnavailable, match="--min-level 0"):
        detain.run(code="pass", backend="venv")
    with pytest.raises(BackendUnavailable):
        detain.run(code="pass", backend="venv", min_level=1)


def test_auto_never_chooses_it():
    assert choose("auto", 0).name != "venv"


def test_every_run_warns_it_is_not_a_security_boundary(capfd):
    result = run("venv", "print('ok')")
    assert result.status == 0, result.stderr
    err = capfd.readouterr().err.strip().splitlines()
    assert [line for line in err if "not a security boundary" in line] == [err[-1]]
    assert any("not a security boundary" in note for note in result.notes)


def test_the_job_gets_a_fresh_venv_that_is_gone_afterwards(state_dir):
    code = ("import os, sys\nprint(os.path.isfile('.detain-venv/pyvenv.cfg'))\n"
            "print([p for p in sys.path if '.detain-venv' in p][0])")
    result = run("venv", code)
    assert result.status == 0, result.stderr
    exists, site = result.stdout.decode().split()
    assert exists == "True" and site.endswith("site-packages")
    import os

    assert not os.path.exists(site)
    assert not leftovers(state_dir)


@pytest.mark.skipif(not ROOT, reason="a fresh uid is given only when detain runs as root")
def test_it_still_never_runs_as_root():
    result = run("venv", "import os; print(os.getuid())")
    assert int(result.stdout) != 0
