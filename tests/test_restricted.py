"""The restricted backend: RestrictedPython's guards, on top of the process confinement.

These show both sides the selftest matrix reports: what the language-level guards stop
(imports, underscore attributes, open/exec) and that they are not what holds the limits
(the process backend's rlimits and timeout still do).
"""

import pytest

from conftest import ROOT, require, run
from detain.errors import DetainError


@pytest.fixture(autouse=True)
def restricted_available():
    require("restricted")


def test_a_snippet_runs_with_print_classes_and_allowed_imports():
    code = ("import math\nfrom collections import Counter\ntotal = 0\nfor x in range(4):\n"
            "    total += x\nclass Box:\n    def area(self):\n        return 6\n"
            "a, b = [1, 2]\nprint(total, math.sqrt(16), Box().area(), a + b,"
            " sorted(Counter('aab').items()))")
    result = run("restricted", code)
    assert result.status == 0, result.stderr
    assert result.stdout == b"6 4.0 6 3 [('a', 2), ('b', 1)]\n"


def test_a_script_runs_with_its_arguments(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("print('script', 2 * 21)\n")
    import detain

    result = detain.run(script, backend="restricted", min_level=1)
    assert result.status == 0, result.stderr
    assert result.stdout == b"script 42\n"


@pytest.mark.parametrize(("code", "message"), [
    ("import os", b"import of 'os' is not allowed"),
    ("import subprocess", b"import of 'subprocess' is not allowed"),
    ("print(().__class__.__bases__)", b"starts with \"_\""),
    ("open('/etc/passwd')", b"name 'open' is not defined"),
    ("exec('1')", b"Exec calls are not allowed"),
    ("getattr(1, 'real')", b"name 'getattr' is not defined"),
])
def test_the_guards_refuse_escape_vectors(code, message):
    result = run("restricted", code)
    assert result.status == 1
    assert message in result.stderr, result.stderr


def test_guards_do_not_hold_resources_the_process_limits_do():
    result = run("restricted", "while True:\n    pass", timeout=2)
    assert result.timed_out


@pytest.mark.skipif(not ROOT, reason="a fresh uid is given only when detain runs as root")
def test_it_still_runs_under_the_process_confinement():
    result = run("restricted", "print(1)")
    assert result.status == 0
    assert result.assurance["uid"] != 0 and result.assurance["no_new_privs"]


def test_modules_are_refused_with_a_clear_error():
    import detain

    with pytest.raises(DetainError, match="only -c snippets and single scripts"):
        detain.run(module="json.tool", backend="restricted", min_level=1)


def test_requirements_are_refused_with_a_clear_error(tmp_path):
    with pytest.raises(DetainError, match="cannot use --with"):
        run("restricted", "pass", with_packages=["anything"], wheelhouse=str(tmp_path))
