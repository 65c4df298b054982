"""A Docker engine for the test session, so `docker` runs the generic tests too.

Register with `pytest_plugins = ["conftest_containers"]` in conftest.py. As root, with
dockerd installed and no engine answering, a private dockerd is started (own socket,
data and exec roots, no bridge and no iptables changes, so the host network is
untouched) and DOCKER_HOST points at it; it is stopped at the end of the session. Without
root or dockerd nothing happens, and the docker tests skip with the probe's reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest

SOCKET = "/run/detain-test-docker.sock"
DATA_ROOT = "/var/lib/detain-test-docker"
EXEC_ROOT = "/run/detain-test-docker"
PIDFILE = "/run/detain-test-docker.pid"
START_SECONDS = 60


def _answers(host: str) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    done = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"],
                          env={"PATH": os.environ.get("PATH", ""), "DOCKER_HOST": host},
                          capture_output=True, timeout=10)
    return done.returncode == 0


def start_dockerd() -> subprocess.Popen | None:
    """Start a private dockerd unless one already answers on our socket; None if reused."""
    host = f"unix://{SOCKET}"
    if _answers(host):
        return None
    log = open(Path(EXEC_ROOT + ".log"), "wb")
    proc = subprocess.Popen(
        [shutil.which("dockerd") or "dockerd", "--host", host, "--data-root", DATA_ROOT,
         "--exec-root", EXEC_ROOT, "--pidfile", PIDFILE, "--bridge", "none",
         "--iptables=false", "--ip-masq=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {proc.returncode}; see {EXEC_ROOT}.log")
        if _answers(host):
            return proc
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    raise RuntimeError(f"dockerd did not answer within {START_SECONDS} s; see {EXEC_ROOT}.log")


def start_or_share_dockerd() -> subprocess.Popen | None:
    """start_dockerd, once more after another session's engine on the same socket and
    roots has stopped or answers (two sessions on one machine race for them). If it still
    cannot start, the session goes on without it: the docker tests then skip with the
    probe's reason instead of every test failing at setup."""
    try:
        return start_dockerd()
    except RuntimeError as first:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and Path(PIDFILE).exists():
            if _answers(f"unix://{SOCKET}"):
                return None
            time.sleep(0.5)
        try:
            return start_dockerd()
        except RuntimeError as again:
            warnings.warn(f"no private dockerd for this session ({first}; then {again})",
                          stacklevel=1)
            return None


@pytest.fixture(scope="session", autouse=True)
def dockerd():
    if os.geteuid() != 0 or shutil.which("dockerd") is None or "DOCKER_HOST" in os.environ:
        yield None
        return
    proc = start_or_share_dockerd()
    os.environ["DOCKER_HOST"] = f"unix://{SOCKET}"
    try:
        yield proc
    finally:
        del os.environ["DOCKER_HOST"]
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
