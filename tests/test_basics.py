"""The job runs as `python` would run it: output, exit status, arguments, input."""

import pytest

from conftest import detain_cli, run


def test_hello_world(backend):
    result = run(backend, "print('hello world')")
    assert result.status == 0, result.stderr
    assert result.stdout == b"hello world\n"
    assert result.backend == backend


@pytest.mark.parametrize(("code", "status"), [
    ("import sys; sys.exit(3)", 3),
    ("raise ValueError('boom')", 1),
    ("import os; os._exit(42)", 42),
    ("pass", 0),
])
def test_exit_status_is_the_codes_own(backend, code, status):
    result = run(backend, code)
    assert result.status == status, result.stderr
    if status == 1:
        assert b"ValueError: boom" in result.stderr
        assert b"launcher.py" not in result.stderr


def test_arguments_reach_sys_argv(backend):
    result = run(backend, "import sys; print(sys.argv)", "one", "two words", "--flag")
    assert result.stdout == b"['-c', 'one', 'two words', '--flag']\n"


def test_stdin_is_passed(backend):
    result = run(backend, "import sys; data = sys.stdin.read(); print(len(data), data[:5])",
                 stdin=b"abcde" * 1000)
    assert result.stdout == b"5000 abcde\n"


def test_no_stdin_reads_eof(backend):
    assert run(backend, "import sys; print(repr(sys.stdin.read()))").stdout == b"''\n"


def test_script_with_arguments(backend, tmp_path):
    script = tmp_path / "greet.py"
    script.write_text("import sys\nprint('hi', *sys.argv[1:])\nprint(__name__)\n")
    result = detain_run_script(backend, script, "a", "b")
    assert result.stdout == b"hi a b\n__main__\n", result.stderr


def detain_run_script(backend, script, *args):
    import detain
    from detain.backends import BACKENDS

    return detain.run(script, *args, backend=backend, min_level=BACKENDS[backend].level)


def test_module(backend):
    import detain
    from detain.backends import BACKENDS

    result = detain.run(module="json.tool", stdin=b'{"b": 1, "a": [1, 2]}',
                        backend=backend, min_level=BACKENDS[backend].level)
    assert result.status == 0, result.stderr
    assert b'"a": [' in result.stdout


def test_unicode_and_invalid_utf8_output(backend):
    code = ("import sys; print('h\\u00e9llo \\u2603 \\U0001F600'); sys.stdout.flush(); "
            "sys.stdout.buffer.write(b'\\xff\\xfe raw\\n'); sys.stderr.buffer.write(b'\\x80err')")
    result = run(backend, code)
    assert result.stdout == "héllo ☃ 😀\n".encode() + b"\xff\xfe raw\n"
    assert result.stderr == b"\x80err"
    assert "\\xff" in result.to_dict()["stdout"]


def test_cli_passes_output_and_status_through(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint(sys.stdin.read().upper())\nsys.exit(5)\n")
    done = detain_cli("run", "--backend", "bwrap", str(script), input=b"quiet input")
    assert done.returncode == 5, done.stderr
    assert done.stdout == b"QUIET INPUT\n"


def test_cli_code_and_module(tmp_path):
    done = detain_cli("run", "--backend", "bwrap", "-c", "import sys; print(sys.argv[1:])",
                      "x", "y")
    assert done.stdout == b"['x', 'y']\n" and done.returncode == 0, done.stderr
    done = detain_cli("run", "--backend", "bwrap", "-m", "json.tool", input=b"[1]")
    assert done.returncode == 0 and done.stdout.split() == [b"[", b"1", b"]"], done.stderr


def test_cli_json_result(tmp_path):
    out = tmp_path / "r.json"
    done = detain_cli("run", "--backend", "bwrap", "--json", str(out), "-c", "print('x')")
    assert done.returncode == 0
    import json

    data = json.loads(out.read_text())
    assert data["stdout"] == "x\n" and data["status"] == 0
    assert data["assurance"]["namespaces"]
    assert data["level"] >= 2
