"""`detain package`: fixture packages misbehave in a known phase; the host sees none of it.

The fixtures are built here, by hand, as files: nothing of them ever runs on the host. The
canary is a loopback listener this test starts; the only other network use is the package
index, in the tests that say so, and only when the host can reach it.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import detain_cli, require
from detain.package.diff import diff
from detain.package.phases import vet
from detain.policy import Policy

pytestmark = pytest.mark.slow
HOME_MARK = ".detain-fixture-was-here"


@pytest.fixture(autouse=True)
def _bwrap():
    require("bwrap")


class Canary:
    """A loopback TCP listener that records whether anyone ever connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()


@pytest.fixture
def canary():
    c = Canary()
    yield c
    c.sock.close()


def build_wheel(dest: Path, name: str, files: dict[str, bytes],
                requires: tuple[str, ...] = ()) -> Path:
    """A minimal, valid py3-none-any wheel holding `files`, depending on `requires`."""
    dist = f"{name}-1.0.dist-info"
    declared = "".join(f"Requires-Dist: {r}\n" for r in requires)
    meta = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                                f"{declared}".encode(),
            f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                             b"Tag: py3-none-any\n"}
    everything = {**files, **meta}
    record = "".join(f"{path},,\n" for path in everything) + f"{dist}/RECORD,,\n"
    path = dest / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in {**everything, f"{dist}/RECORD": record.encode()}.items():
            archive.writestr(member, data)
    return path


def build_sdist(dest: Path, name: str, setup_py: str) -> Path:
    path = dest / f"{name}-1.0.tar.gz"
    files = {"setup.py": setup_py.encode(), f"{name}.py": b"VALUE = 1\n",
             "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()}
    with tarfile.open(path, "w:gz") as archive:
        for member, data in files.items():
            info = tarfile.TarInfo(f"{name}-1.0/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def events(report: dict, phase: str) -> list[dict]:
    found = [p for p in report["phases"] if p["phase"] == phase]
    return found[0]["report"]["events"] if found else []


def policy() -> Policy:
    return Policy().merge({"backend": "bwrap", "timeout": 180}, "test")


def index_reachable() -> str | None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/setuptools/", timeout=5).close()
    except OSError as exc:
        return f"the host cannot reach the package index ({exc})"
    return None


def test_wheel_that_writes_home_ships_pth_and_elf(tmp_path):
    marker = Path.home() / HOME_MARK
    assert not marker.exists()
    code = (f"import os\nwith open(os.path.expanduser('~/{HOME_MARK}'), 'w') as f:\n"
            "    f.write('x')\n").encode()
    wheel = build_wheel(tmp_path, "homewriter", {
        "homewriter/__init__.py": code,
        "homewriter/helper": Path("/bin/true").read_bytes(),
        "homewriter-startup.pth": b"import os; os.environ['DETAIN_PTH_RAN'] = "
                                  b"str(compile('1', 'pth-hook', 'eval'))\n",
    })
    report = vet(str(wheel), policy())
    assert [p["status"] for p in report["phases"]] == [0, 0], report["phases"]
    findings = report["scan"]["findings"]
    assert any(f["file"].endswith("homewriter/helper") for f in findings), findings
    assert any(f["file"].endswith(".pth") for f in findings), findings
    imported = events(report, "import")
    writes = [e for e in imported if e["category"] == "file-write"
              and HOME_MARK in str(e["detail"].get("path"))]
    assert writes and writes[0]["file"].endswith("homewriter/__init__.py"), imported
    assert any(e["event"] == "compile" and "pth-hook" in str(e["detail"]) for e in imported)
    assert not any(HOME_MARK in str(e["detail"]) for e in events(report, "install"))
    assert not marker.exists()


def test_sdist_phoning_home_from_setup_py_is_refused_during_install(tmp_path, canary):
    reason = index_reachable()
    if reason:
        pytest.skip(reason + "; building an sdist needs setuptools from it")
    setup_py = f"""
import urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:{canary.port}/phone-home", timeout=5)
except Exception as exc:
    print("phone home failed:", exc)
from setuptools import setup
setup(name="phonehome", version="1.0", py_modules=["phonehome"])
"""
    report = vet(str(build_sdist(tmp_path, "phonehome", setup_py)), policy())
    assert report["fetch"]["kind"] == "sdist"
    assert any("setup.py" in f["file"] for f in report["scan"]["findings"])
    install = events(report, "install")
    refused = [e for e in install if e["event"] == "proxy.connect"
               and e["detail"]["port"] == canary.port]
    assert refused and refused[0]["detail"]["allowed"] is False, install
    assert refused[0]["provenance"] == "kernel/runtime"
    assert not any(e["event"] == "proxy.connect" for e in events(report, "import"))
    assert canary.hits == 0


def test_real_package_from_the_index_in_under_30_seconds():
    reason = index_reachable()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    done = detain_cli("package", "--json", "-", "six==1.17.0", timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    assert [p["phase"] for p in report["phases"]] == ["install", "import"]
    assert report["phases"][1]["outcome"]["modules"] == {"six": None}
    assert elapsed < 30, f"detain package took {elapsed:.1f} s"


def test_diff_shows_new_behaviour(tmp_path):
    old = vet(str(build_wheel(tmp_path, "drift", {"drift.py": b"VALUE = 1\n"})), policy())
    newer_dir = tmp_path / "new"
    newer_dir.mkdir()
    code = b"import subprocess\nsubprocess.run(['true'])\n"
    new = vet(str(build_wheel(newer_dir, "drift", {"drift.py": code})), policy())
    added = diff(new, old)
    assert "import" in added and "processes" in added["import"], added
    assert diff(old, old) == {}


def test_bad_spec_is_one_line():
    done = detain_cli("package", "no such thing!")
    assert done.returncode == 2 and b"Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith(b"detain: error: 'no such thing!'")


def test_directory_spec(tmp_path):
    reason = index_reachable()
    if reason:
        pytest.skip(reason + "; building a project needs setuptools from it")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "dirpkg"\nversion = "1.0"\n[tool.setuptools]\npy-modules = '
        '["dirpkg"]\n')
    (project / "dirpkg.py").write_text("VALUE = 1\n")
    report = vet(str(project), policy())
    assert report["fetch"]["kind"] == "directory"
    assert [p["status"] for p in report["phases"]] == [0, 0], report["phases"][0]["output_tail"]
    shutil.rmtree(project)


def test_a_dependency_s_work_is_the_package_s_line_through_it(tmp_path, monkeypatch, request):
    """Vetting a package that depends on another: what the dependency does when the
    package calls it is reported at the package's own line, `through` the dependency; the
    dependency's import-time capability probe (a bind to port 0) is no high finding."""
    if reason := index_reachable():  # pip still asks the index (find-links come first)
        pytest.skip(reason)
    dep = "detain_selftest_netdep"
    links = Path(tempfile.mkdtemp(dir="/var/tmp"))  # /tmp is the sandbox's own: not mounted
    request.addfinalizer(lambda: shutil.rmtree(links))
    links.chmod(0o755)  # read by the run's own uid
    build_wheel(links, dep, {f"{dep}.py": (
        b"import socket\n"
        b"_probe = socket.socket()\n_probe.bind(('127.0.0.1', 0))\n_probe.close()\n"
        b"def send():\n"
        b"    try:\n"
        b"        socket.create_connection(('198.51.100.9', 80), timeout=1).close()\n"
        b"    except OSError:\n"
        b"        pass\n")})
    user = build_wheel(tmp_path, "detain_selftest_depuser", {
        "detain_selftest_depuser/__init__.py": f"import {dep}\n{dep}.send()\n".encode()},
        requires=(dep,))
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    report = vet(str(user), policy())
    assert [p["status"] for p in report["phases"]] == [0, 0], report["phases"]
    imported = events(report, "import")
    sent = [e for e in imported if e["event"] == "socket.connect"
            and "198.51.100.9" in str(e["detail"])]
    assert sent and sent[0]["file"] == "detain_selftest_depuser/__init__.py", imported
    assert sent[0]["line"] == 2 and sent[0]["through"] == dep
    assert sent[0]["via"][-1].startswith(f"{dep}.py:"), sent[0]  # the dependency's own line
    probes = [e for e in imported if e["event"] in ("socket.bind", "kernel.bind")]
    assert probes and all(e["severity"] == "low" for e in probes), probes
    assert all(e.get("through") == dep for e in probes if e["event"] == "socket.bind")


def test_pips_configured_ca_bundle_is_handed_to_the_install_phase(tmp_path, monkeypatch):
    """A proxy that re-signs TLS (or a private index) is trusted through pip's `cert`
    setting; the install phase's pip runs --isolated, so detain passes it on."""
    from detain.package.index import read_config
    from detain.package.phases import CERT_MOUNT, _index_access

    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_CERT", str(bundle))
    mounts, options = _index_access(read_config(), policy())
    assert options[options.index("--cert") + 1] == CERT_MOUNT
    assert any(m.host == bundle and m.sandbox == CERT_MOUNT and not m.writable for m in mounts)
    monkeypatch.setenv("PIP_CERT", str(tmp_path / "missing.pem"))
    assert "--cert" not in _index_access(read_config(), policy())[1]


def test_build_tools_and_the_package_s_own_settings_are_low(tmp_path):
    """What builds run (git) and a variable named after the package itself are shown low;
    a credential's variable read in the same setup.py is high and the one reason."""
    setup_py = ("import os, subprocess\nfrom setuptools import setup\n"
                "subprocess.run(['git', '--version'], capture_output=True)\n"
                "os.environ.get('DETAIN_SELFTEST_CFG_TOKEN')\n"
                "os.environ.get('GITHUB_TOKEN')\n"
                "setup(name='detain_selftest_cfg', version='1.0', "
                "py_modules=['detain_selftest_cfg'])\n")
    report = vet(str(build_sdist(tmp_path, "detain_selftest_cfg", setup_py)), policy())
    installed = events(report, "install")
    severity = {(e["event"], e["line"]): e["severity"] for e in installed
                if e.get("file") == "setup.py"}
    assert severity.get(("subprocess.Popen", 3)) == "low", installed
    assert severity.get(("os.environ.get", 4)) == "low"
    assert severity.get(("os.environ.get", 5)) == "high"
    assert report["verdict"]["reasons"] == [
        "decoy credentials read: environment variable GITHUB_TOKEN (setup.py:5, install)"]
