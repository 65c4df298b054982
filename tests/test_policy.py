"""Policy sources, precedence, and one-line errors for every bad value."""

import pytest

from conftest import detain_cli
from detain.config import load_policy
from detain.errors import PolicyError
from detain.policy import CopyOut, Mount, Policy


def test_defaults_are_safe():
    policy = Policy()
    assert policy.network == "none" and policy.min_level == 2 and policy.profile == "strict"
    assert policy.limits.wall_seconds == 30 and policy.limits.memory_bytes == 512 << 20
    assert policy.limits.processes == 64 and policy.limits.disk_bytes == 256 << 20
    assert policy.limits.output_bytes == 4 << 20 and dict(policy.env) == {}
    assert policy.interpreter_flags == ("-I", "-S", "-X", "dev", "-W", "error")


def test_precedence_user_config_then_file_then_cli(tmp_path, monkeypatch):
    user = tmp_path / "user.toml"
    user.write_text('timeout = 7\nmemory = "300M"\nprocesses = 10\n')
    monkeypatch.setenv("DETAIN_CONFIG", str(user))
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('memory = "200M"\nprofile = "isolated"\n')
    policy = load_policy(policy_file, {"processes": "5"})
    assert policy.limits.wall_seconds == 7
    assert policy.limits.memory_bytes == 200 << 20
    assert policy.limits.processes == 5
    assert policy.profile == "isolated"


@pytest.mark.parametrize(("settings", "message"), [
    ({"memory": "lots"}, "expected a size"),
    ({"timeout": "-1"}, "positive number"),
    ({"processes": "0"}, "between 1 and"),
    ({"backend": "chroot"}, "unknown backend"),
    ({"min_level": "7"}, "level from 0 to 4"),
    ({"network": "everything"}, "only network"),
    ({"profile": "loose"}, "expected one of"),
    ({"colour": "red"}, "unknown setting"),
    ({"env": ["NOEQUALS"]}, "NAME=VALUE"),
    ({"copy_out": ["/etc/passwd:/tmp/x"]}, "only paths under /scratch"),
    ({"copy_out": ["../../etc:/tmp/x"]}, "'..' is not allowed"),
    ({"mount": ["/nonexistent-path:/mnt"]}, "does not exist"),
    ({"mount": ["/usr:/proc"]}, "managed by detain"),
    ({"python": "/nonexistent/python"}, "not an executable"),
])
def test_invalid_values_are_one_clear_error(settings, message):
    with pytest.raises(PolicyError, match=message):
        Policy().merge(settings, "test")


def test_specs_parse():
    mount = Mount.parse("/usr/share:/mnt/share:rw")
    assert mount.writable and mount.sandbox == "/mnt/share"
    assert not Mount.parse("/usr/share:/mnt/share").writable
    out = CopyOut.parse("results/out.txt:/tmp/somewhere")
    assert out.sandbox == "/scratch/results/out.txt"


@pytest.mark.parametrize("argv", [
    ["run", "--memory", "lots", "-c", "pass"],
    ["run", "--backend", "nope", "-c", "pass"],
    ["run", "/does/not/exist.py"],
    ["run"],
    ["run", "--policy", "/does/not/exist.toml", "-c", "pass"],
    ["run", "--mount", "garbage", "-c", "pass"],
    ["run", "--copy-out", "nocolon", "-c", "pass"],
    ["run", "--unknown-flag"],
    ["bogus-command"],
])
def test_cli_bad_input_is_one_line_and_exit_2(argv):
    done = detain_cli(*argv)
    assert done.returncode == 2, done
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr.decode()


def test_cli_invalid_policy_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("timeout = [")
    done = detain_cli("run", "--policy", str(bad), "-c", "pass")
    assert done.returncode == 2 and b"not a readable TOML file" in done.stderr


def test_cli_refuses_below_min_level_and_says_how():
    done = detain_cli("run", "--backend", "process", "-c", "pass")
    assert done.returncode == 2
    assert b"--min-level 1" in done.stderr
    done = detain_cli("run", "--backend", "process", "--min-level", "1", "-c", "print(1)")
    assert done.returncode == 0 and done.stdout == b"1\n"
