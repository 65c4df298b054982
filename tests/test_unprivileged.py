"""The bwrap containment tests, again, with detain running as an ordinary user."""

import pytest

from as_user import run_tests_as_user
from conftest import ROOT


@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_bwrap_containment_as_unprivileged_user():
    run_tests_as_user("bwrap", ["tests/test_containment.py", "tests/test_limits.py",
                                "tests/test_basics.py", "tests/test_files.py"])
