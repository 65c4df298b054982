"""The report: JSON (own schema), SARIF (official 2.1.0 schema), HTML (headless Chromium), CLI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema

import detain
from browser import browse, chromium, page_requests
from conftest import REPO, detain_cli, require, run
from detain.backends import BACKENDS
from detain.config import load_policy
from detain.report.build import build_report, fail_on
from detain.report.output import render
from detain.report.suggest import suggest_policy
from detain.scan import scan
from report_helpers import PAYLOAD, expected, marker_lines

SARIF_SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
REPORT_SCHEMA = json.loads((REPO / "src/detain/report/schema.json").read_text())


def payload_report(backend: str) -> dict:
    static = scan(PAYLOAD)
    result = detain.run(PAYLOAD, backend=backend, min_level=BACKENDS[backend].level)
    assert result.status == 0, result.stderr
    return json.loads(render(build_report(result, static), ".json"))


def test_json_report_has_every_deed_and_validates(backend):
    report = payload_report(backend)
    jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(report)
    lines = marker_lines()
    for marker, (name, _) in expected(backend).items():
        assert any(e["event"] == name and e["file"] == "payload.py"
                   and e["line"] == lines[marker] for e in report["events"]), marker
    exec_finding = next(f for f in report["static"]["findings"] if f["rule"] == "exec-decoded")
    assert exec_finding["confirmed"] and exec_finding["line"] == lines["exec"]
    assert report["summary"]["unpredicted"] > 0  # e.g. the connect: no static rule saw it
    assert set(fail_on(report, ["network", "write", "subprocess", "native", "high"])) == {
        "network", "write", "subprocess", "native", "high"}


def test_sarif_validates_and_locates_every_deed(backend):
    report = payload_report(backend)
    sarif = json.loads(render(report, ".sarif"))
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(sarif)
    static_run, dynamic_run = sarif["runs"]
    lines = marker_lines()
    located = {(r["ruleId"].split("/")[-1], r["locations"][0]["physicalLocation"]["region"]
                ["startLine"]) for r in dynamic_run["results"] if r["locations"]}
    for marker, (name, _) in expected(backend).items():
        assert (name, lines[marker]) in located, marker
    assert any(r["ruleId"] == "detain/exec-decoded" for r in static_run["results"])


def test_suggested_policy_is_valid_toml_and_tighter(tmp_path):
    result = detain.run(PAYLOAD, backend="process", min_level=1)
    text = suggest_policy(build_report(result))
    data = tomllib.loads(text)
    assert data["network"] == "none"
    assert "192.0.2.1" in text
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(text)
    policy = load_policy(policy_file, project_dir=None)
    assert policy.limits.processes < detain.Policy().limits.processes


def test_cli_report_files_and_fail_on(tmp_path, backend):
    out = tmp_path / "r"
    proc = detain_cli("run", "--backend", backend, "--min-level", str(BACKENDS[backend].level),
                      "--report", f"{out}.json", "--report", f"{out}.sarif",
                      "--report", f"{out}.html", "--fail-on", "subprocess", "--summary",
                      str(PAYLOAD), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr.decode()
    assert b"--fail-on subprocess" in proc.stderr
    assert b"notable behaviour" in proc.stderr
    for suffix in ("json", "sarif", "html"):
        assert Path(f"{out}.{suffix}").stat().st_size > 500
    quiet = detain_cli("run", "--backend", backend, "--min-level",
                       str(BACKENDS[backend].level), "--fail-on", "network", "-c", "print(1)")
    assert quiet.returncode == 0, quiet.stderr.decode()


def test_cli_rejects_unknown_report_format(tmp_path):
    proc = detain_cli("run", "--report", str(tmp_path / "r.pdf"), "-c", "pass")
    assert proc.returncode == 2
    assert proc.stderr.decode().count("\n") == 1


def test_html_is_escaped(tmp_path):
    result = detain.run(code="open('<script>alert(1)</script>', 'w')", backend="process",
                        min_level=1)
    page = render(build_report(result), ".html")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_html_renders_in_headless_chromium_offline(tmp_path):
    browser = chromium()
    control = tmp_path / "control"
    control.mkdir()
    (control / "p.html").write_text('<img src="http://203.0.113.5/x.png">')
    browse(browser, control / "p.html", control, "--dump-dom")
    assert page_requests(control / "net.json"), "the net-log check cannot see page requests"

    static = scan(PAYLOAD)
    result = detain.run(PAYLOAD, backend="process", min_level=1)
    page = tmp_path / "report.html"
    page.write_text(render(build_report(result, static), ".html"))
    shot = tmp_path / "shot.png"
    browse(browser, page, tmp_path, f"--screenshot={shot}")
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert not page_requests(tmp_path / "net.json")
    dom = browse(browser, page, tmp_path / "again", "--dump-dom").stdout.decode()
    assert 'id="summary"' in dom and 'id="timeline"' in dom and 'class="tick"' in dom
    assert "socket.connect" in dom
    assert not page_requests(tmp_path / "again" / "net.json")


def test_gvisor_kernel_trace_becomes_trusted_events():
    require("gvisor")
    result = detain.run(PAYLOAD, backend="gvisor", min_level=4, trace="syscalls")
    kernel = [e for e in build_report(result)["events"] if e["provenance"] == "kernel/runtime"]
    connect = next(e for e in kernel if e["event"] == "kernel.connect"
                   and e["detail"]["target"] == "192.0.2.1:443")
    assert connect["detail"]["outcome"].startswith("refused")
    assert any(e["event"] == "kernel.execve" and e["detail"]["target"] == "/bin/sh"
               for e in kernel)
    assert not any("/detain/" in e["detail"]["target"] for e in kernel)


def test_limit_kills_are_kernel_runtime_events(backend):
    result = run(backend, "while True: pass", timeout=1)
    report = build_report(result)
    assert report["limits_hit"] == ["wall-clock"]
    killed = [e for e in report["events"] if e["event"] == "wall-clock"]
    assert killed and killed[0]["provenance"] == "kernel/runtime"
    jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(report)
