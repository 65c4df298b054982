"""The escape battery again with detain running as an ordinary user: what the review
attacked unprivileged (bwrap, landlock, rootless podman) must be contained there too."""

import pytest

from as_user import run_tests_as_user
from conftest import ROOT

BATTERY = "tests/test_selftest.py"
HOME_BASE = "/var/tmp"  # not /tmp: the bait dir is shown inside at its own path


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_battery_as_unprivileged_user(backend):
    run_tests_as_user(f"battery_on_every_backend and {backend}", [BATTERY], home_base=HOME_BASE)


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="creating a user needs root")
def test_battery_on_rootless_podman():
    run_tests_as_user("battery_on_every_backend and podman", [BATTERY], subids=True,
                      home_base=HOME_BASE)
