"""The CI example and the pre-commit hook name real detain commands that do what they say."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO
from detain.cli.parser import build_parser

WORKFLOW = REPO / "examples" / "ci" / "github-actions.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
DETAIN = Path(sys.executable).with_name("detain")


def detain_lines(steps: list[dict]) -> list[list[str]]:
    """Every `detain ...` command line of the workflow's `run:` steps, split as a shell does."""
    return [shlex.split(line) for step in steps for line in step.get("run", "").splitlines()
            if line.strip().startswith("detain ")]


def test_ci_example_uses_real_commands_and_uploads_what_they_write():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["detain"]["steps"]
    parser = build_parser()
    written, gated = set(), set()
    for argv in detain_lines(steps):
        args = parser.parse_args(argv[1:])  # a flag detain lacks exits 2 here
        written.update(getattr(args, "report", []))
        if getattr(args, "fail_on", None):
            gated.add(args.command)
    assert gated == {"scan", "run"}
    uploads = [step["with"]["sarif_file"] for step in steps
               if step.get("uses", "").startswith("github/codeql-action/upload-sarif@")]
    assert uploads and set(uploads) <= written
    assert all(path.endswith(".sarif") for path in uploads)


def scan_as_pre_commit(tmp_path: Path, *files: str) -> subprocess.CompletedProcess:
    """The hook as pre-commit runs it: entry, then args, then the staged files."""
    hook, = yaml.safe_load(HOOKS.read_text())
    argv = shlex.split(hook["entry"]) + hook["args"] + list(files)
    assert argv[0] == "detain"
    return subprocess.run([str(DETAIN), *argv[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


def test_pre_commit_hook_definition():
    hook, = yaml.safe_load(HOOKS.read_text())
    assert (hook["id"], hook["entry"], hook["language"], hook["types"]) == (
        "detain-scan", "detain scan", "python", ["python"])


def test_pre_commit_hook_fails_on_a_bad_file_among_several(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(
        "import os\nkey = open(os.path.expanduser('~/.ssh/id_rsa')).read()\n")
    (tmp_path / "clean.py").write_text("def add(a, b):\n    return a + b\n")
    (tmp_path / "also_clean.py").write_text("VALUE = 1\n")
    bad = scan_as_pre_commit(tmp_path, "clean.py", "pkg/bad.py")
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "pkg/bad.py:2" in bad.stderr  # named as pre-commit gave it
    assert "--fail-on high: matched" in bad.stdout
    clean = scan_as_pre_commit(tmp_path, "clean.py", "also_clean.py")
    assert clean.returncode == 0, clean.stdout + clean.stderr
