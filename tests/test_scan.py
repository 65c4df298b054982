"""Static pre-scan: Bandit plus detain's own checks, and nothing in the target executes."""

from __future__ import annotations

import json
import shutil

from conftest import detain_cli
from detain.scan import scan
from report_helpers import FIXTURE


def suspicious_package(tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(FIXTURE, package)
    (package / "_speedups.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 64)
    (package / "tool.exe").write_bytes(b"MZ" + b"\0" * 64)
    blob = "QUFB" * 60
    (package / "loader.py").write_text(
        f"import base64, zlib\nDATA = '{blob}'\n"
        "exec(zlib.decompress(base64.b64decode(DATA)))\n")
    sentinel = tmp_path / "executed"
    (package / "boom.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    return package, sentinel


def rules(report):
    return {(f["rule"], f["file"]) for f in report["findings"]}


def test_detain_checks_find_what_the_seeds_warn_about(tmp_path):
    package, sentinel = suspicious_package(tmp_path)
    report = scan(package)
    found = rules(report)
    assert ("native-binary", "_speedups.so") in found
    assert ("native-binary", "tool.exe") in found
    assert ("pth-exec", "suspicious.pth") in found
    assert ("setup-network", "setup.py") in found
    assert ("setup-process", "setup.py") in found
    assert ("setup-file-write", "setup.py") in found
    assert ("encoded-blob", "loader.py") in found
    assert ("exec-decoded", "loader.py") in found
    assert ("exec-decoded", "payload.py") in found
    assert not sentinel.exists()


def test_bandit_runs_as_a_library(tmp_path):
    package, _ = suspicious_package(tmp_path)
    report = scan(package)
    assert "bandit" in report["tools"]
    bandit = {f["rule"] for f in report["findings"] if f["tool"] == "bandit"}
    assert {"B102", "B605"} <= bandit  # exec, os.system with a shell
    assert all(f["line"] >= 1 for f in report["findings"])


def test_hostile_files_do_not_break_the_scan(tmp_path):
    (tmp_path / "bad.py").write_bytes(b"def (:\n\xff\xfe")
    (tmp_path / "loop").symlink_to(tmp_path)
    (tmp_path / "deep.py").write_text("x = " + "(" * 5000 + ")" * 5000 + "\n")
    report = scan(tmp_path)
    assert any("bad.py" in e for e in report["errors"])


def test_scan_cli(tmp_path):
    package, sentinel = suspicious_package(tmp_path)
    out = tmp_path / "scan.json"
    proc = detain_cli("scan", str(package), "--report", str(out), "--fail-on", "native")
    assert proc.returncode == 3, proc.stderr.decode()
    report = json.loads(out.read_text())
    assert report["job"]["kind"] == "scan" and report["static"]["findings"]
    assert not sentinel.exists()
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "ok.py").write_text("print('hello')\n")
    assert detain_cli("scan", str(clean), "--fail-on", "high").returncode == 0
    missing = detain_cli("scan", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count(b"\n") == 1


def test_an_oversized_source_is_flagged_not_scanned(tmp_path):
    """A package's 450 MiB big.py once took the host's scan to 4 GB of memory."""
    (tmp_path / "big.py").write_bytes(b"x = 1\n" * (3 << 19))
    (tmp_path / "small.py").write_text("import os\nos.system('id')\n")
    result = scan(tmp_path)
    rules = {(f["file"], f["rule"]) for f in result["findings"]}
    assert ("big.py", "oversized-source") in rules
    assert any(file == "small.py" for file, _ in rules)
    assert not any(file == "big.py" and rule != "oversized-source" for file, rule in rules)
