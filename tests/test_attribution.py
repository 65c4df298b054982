"""Where an event happened: the code under test's own line, never the stdlib's, a
dependency's or `<string>`'s; and what no audit event used to show (a name a socket was
about to resolve, a credential read from the environment).

Runs real jobs on bwrap; the "dependency" is a module in a `site-packages` dir mounted in
and put on the job's path, as a venv's would be.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import detain_cli, require, run
from detain.report.build import crosscheck


@pytest.fixture(autouse=True)
def _bwrap():
    require("bwrap")


JOB = """\
import os, socket, sys
sys.path.insert(0, "/mnt/deps/site-packages")
import fakedep
exec(compile("open('/etc/hostname').close()", "<string>", "exec"))
fakedep.reach("127.0.0.1", 9)
try:
    socket.socket().connect(("host.example", 80))
except OSError:
    pass
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    udp.sendto(b"x", ("dns.example", 53))
except OSError:
    pass
try:
    socket.create_connection(("exfil.example", 80), timeout=1)
except OSError:
    pass
os.environ.get("AWS_SECRET_ACCESS_KEY")
os.getenv("GITHUB_TOKEN")
os.getenv("PATH")
print(isinstance(os.environ, os._Environ), os.environ["AWS_SECRET_ACCESS_KEY"] == "sekrit-value")
"""
DEPENDENCY = """\
import socket


def reach(host, port):
    sock = socket.socket()
    try:
        sock.connect((host, port))
    except OSError:
        pass
    finally:
        sock.close()
"""


def line_of(text: str) -> int:
    return next(n for n, line in enumerate(JOB.splitlines(), 1) if text in line)


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> tuple[dict, bytes]:
    tmp = tmp_path_factory.mktemp("attribution")
    (tmp / "site-packages" / "fakedep").mkdir(parents=True)
    (tmp / "site-packages" / "fakedep" / "__init__.py").write_text(DEPENDENCY)
    (tmp / "job.py").write_text(JOB)
    report = tmp / "report.json"
    done = detain_cli("run", "--backend", "bwrap", "--env", "AWS_SECRET_ACCESS_KEY=sekrit-value",
                      "--mount", f"{tmp / 'site-packages'}:/mnt/deps/site-packages",
                      "--report", str(report), "--report", str(tmp / "report.sarif"),
                      str(tmp / "job.py"), timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.strip() == b"True True"  # a real os._Environ, values intact
    return json.loads(report.read_text()), (tmp / "report.sarif").read_bytes()


def events(report: dict, name: str) -> list[dict]:
    return [e for e in report["events"] if e["event"] == name]


def test_exec_is_attributed_to_the_line_that_ran_it(ran):
    report, sarif = ran
    opened = [e for e in events(report, "open") if e["detail"]["path"] == "/etc/hostname"]
    assert opened and opened[0]["file"] == "job.py", opened
    assert opened[0]["line"] == line_of("exec(compile") and opened[0]["via"] == ["<string>:1"]
    located = [r["locations"] for run in json.loads(sarif)["runs"] for r in run["results"]
               if "/etc/hostname" in r["message"]["text"]]
    assert located and located[0][0]["physicalLocation"]["artifactLocation"]["uri"] \
        == "job.py", located


def test_a_dependency_is_passed_through_to_the_caller(ran):
    report, _ = ran
    connects = [e for e in events(report, "socket.connect") if "9)" in e["summary"]]
    assert connects, report["events"]
    assert (connects[0]["file"], connects[0]["line"]) == ("job.py", line_of("fakedep.reach"))
    assert connects[0]["through"] == "fakedep"
    # the dependency's own import is not the job's: only the job's `import fakedep` shows
    assert not [e for e in events(report, "import") if e["file"] != "job.py"]


def test_names_a_socket_would_resolve_are_recorded(ran):
    report, _ = ran
    lookups = {(e["detail"]["host"], e["line"]) for e in events(report, "socket.getaddrinfo")}
    assert ("host.example", line_of("host.example")) in lookups, lookups
    assert ("dns.example", line_of("dns.example")) in lookups, lookups
    assert ("exfil.example", line_of("exfil.example")) in lookups, lookups


def test_secret_environment_reads_are_named_never_valued(ran):
    report, sarif = ran
    reads = {(e["detail"]["name"], e["line"], e["severity"])
             for e in events(report, "os.environ.get")}
    assert ("AWS_SECRET_ACCESS_KEY", line_of('os.environ.get("AWS'), "high") in reads, reads
    assert ("GITHUB_TOKEN", line_of("GITHUB_TOKEN"), "high") in reads, reads
    assert not any(name == "PATH" for name, _, _ in reads)
    assert "sekrit-value" not in json.dumps(report["events"]) and b"sekrit-value" not in sarif
    assert report["verdict"]["level"] == "malicious-looking"


def test_prediction_is_per_line_or_function(tmp_path):
    (tmp_path / "mod.py").write_text(textwrap.dedent("""\
        import subprocess


        def build():
            cmd = ["true"]
            subprocess.run(
                cmd)
            return cmd


        def other():
            subprocess.run(["false"])
        """))
    finding = {"category": "process", "file": "pkg-1.0/mod.py", "line": 6}
    near = {"category": "process", "file": "mod.py", "line": 7, "seq": 1,
            "provenance": "in-process"}
    same_function = dict(near, line=8, seq=2)
    elsewhere = dict(near, line=12, seq=3)
    findings = [dict(finding)]
    root = tmp_path.parent / "root"
    (root / "pkg-1.0").mkdir(parents=True)
    (root / "pkg-1.0" / "mod.py").write_text((tmp_path / "mod.py").read_text())
    crosscheck(findings, [near, same_function, elsewhere], scanned=True, root=str(root))
    assert findings[0]["confirmed_by"] == [1, 2]
    assert (near["predicted"], same_function["predicted"], elsewhere["predicted"]) == (
        True, True, False)


def test_code_exec_d_by_a_c_job_is_its_line_whatever_name_compile_was_given():
    """`-c` code is the job's own even though it is `<string>`; what it exec'd, compiled
    under any name ('r', a path that is no file), is reported at the exec's line."""
    code = ("src = 'import os\\nos.system(\"true\")\\n'\n"
            "code = compile(src, 'r', 'exec')\nexec(code)\n")
    result = run("bwrap", code)
    spawned = [e for e in result.behaviour["events"] if e["event"] == "os.system"]
    assert [(e["file"], e["line"], e["via"]) for e in spawned] == [("<string>", 3, ["r:2"])]
