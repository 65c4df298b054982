"""What an install puts where Python runs it unasked, from any distribution, and modules
the import phase must not miss.

A dependency's top-level sitecustomize.py runs at every interpreter start; the pre-scan of
the vetted package never saw it (it is another distribution's) and `site.addsitedir`
(how the import phase adds the installed tree) does not run it. Modules in a directory
without __init__.py (a namespace package) are importable, and pkgutil does not list them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from detain.package.phases import vet
from detain.report.verdict import MALICIOUS
from test_package import build_wheel, events, index_reachable, policy


def test_a_dependency_s_sitecustomize_is_found_and_run(tmp_path, monkeypatch, request):
    if reason := index_reachable():  # pip still asks the index (find-links come first)
        pytest.skip(reason)
    dep = "detain_selftest_startdep"
    links = Path(tempfile.mkdtemp(dir="/var/tmp"))  # /tmp is the sandbox's own: not mounted
    request.addfinalizer(lambda: shutil.rmtree(links))
    links.chmod(0o755)
    build_wheel(links, dep, {
        f"{dep}.py": b"VALUE = 1\n",
        "sitecustomize.py": b"import os\nos.listdir('/home/dev/.ssh')\n"})
    user = build_wheel(tmp_path, "detain_selftest_startuser", {
        "detain_selftest_startuser/__init__.py": b"X = 1\n",
        "detain_selftest_startuser/hidden/payload.py":
            b"import socket\nsocket.socket().bind(('127.0.0.1', 0))\n"},
        requires=(dep,))
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    report = vet(str(user), policy())
    assert [p["status"] for p in report["phases"]] == [0, 0], report["phases"]
    placed = report["phases"][0]["placed"]
    assert [f["rule"] for f in placed] == ["startup-hook"], placed
    assert f"{dep}-1.0" in placed[0]["message"]
    assert report["verdict"]["level"] == MALICIOUS
    assert any("sitecustomize.py" in r for r in report["verdict"]["reasons"]), report["verdict"]
    outcome = report["phases"][1]["outcome"]
    assert "sitecustomize" in outcome["modules"]
    assert "detain_selftest_startuser.hidden.payload" in outcome["modules"], outcome
    imported = events(report, "import")
    assert any(e["event"] == "socket.bind" and e["file"] ==
               "detain_selftest_startuser/hidden/payload.py" for e in imported), imported


def test_a_sitecustomize_a_pth_path_line_reaches_and_shadow_scripts_are_found(tmp_path):
    """site imports the first sitecustomize on sys.path: one in a dir a .pth path line adds
    runs at every start as surely as one at the top. A symlinked .pth is not followed."""
    from detain.scan.checks import check_installed

    site = tmp_path / "site"
    (site / "dep" / "_vendor").mkdir(parents=True)
    (site / "dep" / "_vendor" / "sitecustomize.py").write_text("import os\n")
    (site / "dep.pth").write_text("# vendored\ndep/_vendor\nimport sys\n")
    (site / "outside.pth").symlink_to("/etc/hostname")
    (site / "bin").mkdir()
    for script in ("doas", "kubectl", "dep-cli", "twine", "pytest"):
        (site / "bin" / script).write_text("#!/bin/sh\n")
    (site / "pytest-9.0.dist-info").mkdir()  # pytest's own console script is no shadow
    (site / "pytest-9.0.dist-info" / "entry_points.txt").write_text(
        "[console_scripts]\npytest = pytest:console_main\n")
    (site / "sitecustomize").mkdir()  # a package is importable as sitecustomize too
    (site / "sitecustomize" / "__init__.py").write_text("")
    (site / "dep-1.0.dist-info").mkdir()
    (site / "dep-1.0.dist-info" / "RECORD").write_text(
        "dep.pth,,\ndep/_vendor/sitecustomize.py,,\nbin/doas,,\n")
    found = {(f["rule"], f["file"]): f["message"] for f in check_installed(site)}
    assert set(found) == {("startup-hook", "site-packages/dep/_vendor/sitecustomize.py"),
                          ("startup-hook", "site-packages/sitecustomize"),
                          ("shadows-program", "site-packages/bin/doas"),
                          ("shadows-program", "site-packages/bin/kubectl"),
                          ("shadows-program", "site-packages/bin/twine")}, found
    assert "dep-1.0" in found[("startup-hook", "site-packages/dep/_vendor/sitecustomize.py")]
    assert "through dep.pth" in found[("startup-hook",
                                       "site-packages/dep/_vendor/sitecustomize.py")]
