"""The seeds' isolated-mode promises hold inside the sandbox, whatever the host sets."""

import detain
from conftest import run
from detain.backends import BACKENDS


def test_python_variables_are_ignored(backend, tmp_path, monkeypatch):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "json.py").write_text("print('HIJACKED via PYTHONPATH')\n")
    (evil / "sitecustomize.py").write_text("print('HIJACKED via sitecustomize')\n")
    startup = tmp_path / "startup.py"
    startup.write_text("print('HIJACKED via PYTHONSTARTUP')\n")
    monkeypatch.setenv("PYTHONPATH", str(evil))
    monkeypatch.setenv("PYTHONSTARTUP", str(startup))
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")
    monkeypatch.setenv("PYTHONINSPECT", "1")
    result = run(backend, "import json, sys; print(json.__name__, sys.flags.isolated, "
                          "sys.flags.inspect, sys.flags.no_user_site)")
    assert result.status == 0, result.stderr
    assert b"HIJACKED" not in result.stdout + result.stderr
    assert result.stdout == b"json 1 0 1\n"
    assert b">>>" not in result.stderr


def test_user_site_packages_are_ignored(backend, tmp_path, monkeypatch):
    home = tmp_path / "home"
    site = home / ".local" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "usercustomize.py").write_text("print('HIJACKED via usercustomize')\n")
    (site / "evil.pth").write_text("import sys; print('HIJACKED via .pth')\n")
    monkeypatch.setenv("HOME", str(home))
    code = ("import sys; print(sys.flags.no_user_site, "
            "[p for p in sys.path if 'site-packages' in p])")
    result = run(backend, code)
    assert b"HIJACKED" not in result.stdout + result.stderr
    assert result.stdout == b"1 []\n", result.stdout


def test_module_beside_the_script_does_not_shadow_the_stdlib(backend, tmp_path):
    (tmp_path / "json.py").write_text("print('HIJACKED: shadowed stdlib')\nloads = None\n")
    script = tmp_path / "main.py"
    script.write_text("import json\nprint(json.loads('[1]'))\n")
    result = detain.run(script, backend=backend, min_level=BACKENDS[backend].level)
    assert result.status == 0, result.stderr
    assert result.stdout == b"[1]\n"


def test_module_in_the_working_directory_does_not_shadow_the_stdlib(backend):
    code = ("open('json.py', 'w').write('print(\"HIJACKED: cwd\")'); "
            "import importlib, json; print(json.loads('2'))")
    result = run(backend, code)
    assert result.stdout == b"2\n" and b"HIJACKED" not in result.stdout


def test_profiles_set_the_seeds_flags(backend):
    code = ("import sys; print(sys.flags.isolated, sys.flags.no_site, sys.flags.dev_mode, "
            "sys.warnoptions[-1:])")
    assert run(backend, code).stdout == b"1 1 True ['error']\n"
    assert run(backend, code, profile="isolated").stdout == b"1 0 False []\n"


def test_strict_profile_turns_warnings_into_errors(backend):
    result = run(backend, "import warnings; warnings.warn('careful'); print('unreachable')")
    assert result.status == 1 and b"UserWarning: careful" in result.stderr
