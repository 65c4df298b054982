"""Tests again with detain running as an ordinary user: bwrap containment, and limits."""

import pytest

from as_user import run_tests_as_user
from conftest import ROOT


@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_bwrap_containment_as_unprivileged_user():
    run_tests_as_user("bwrap", ["tests/test_containment.py", "tests/test_limits.py",
                                "tests/test_basics.py", "tests/test_files.py"])


@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_limits_hold_as_totals_or_are_refused_as_unprivileged_user():
    run_tests_as_user("not by_hand", ["tests/test_unprivileged_limits.py"], subids=True)
