"""The probe cache: an answer is reused only for the same binary, and only from a cache
nobody else could have written (host/probe_cache.py)."""

from __future__ import annotations

import os
import shutil

from detain.host.probe_cache import FILE, cached_answer


def asker(answers: list[str | None]):
    calls = []

    def ask() -> str | None:
        calls.append(1)
        return answers[len(calls) - 1]
    return ask, calls


def tool(tmp_path):
    binary = tmp_path / "tool"
    shutil.copy("/bin/true", binary)
    return str(binary)


def test_an_answer_is_asked_once_per_binary(tmp_path, state_dir):
    binary, cache = tool(tmp_path), str(tmp_path / "cache")
    ask, calls = asker(["1.0", "2.0"])
    assert cached_answer(binary, "--version", ask, cache) == "1.0"
    assert cached_answer(binary, "--version", ask, cache) == "1.0"
    assert len(calls) == 1
    assert os.stat(cache).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(cache, FILE)).st_mode & 0o777 == 0o600
    other, _ = asker(["flags"])
    assert cached_answer(binary, "flags", other, cache) == "flags"  # another question
    os.utime(binary, ns=(1, 1))  # the binary changed: asked again
    assert cached_answer(binary, "--version", ask, cache) == "2.0"
    assert len(calls) == 2


def test_no_answer_is_not_kept_and_a_missing_binary_is_not_asked(tmp_path, state_dir):
    binary, cache = tool(tmp_path), str(tmp_path / "cache")
    ask, calls = asker([None, "1.0"])
    assert cached_answer(binary, "--version", ask, cache) is None
    assert cached_answer(binary, "--version", ask, cache) == "1.0"
    assert cached_answer(str(tmp_path / "gone"), "--version", ask, cache) is None
    assert len(calls) == 2


def test_a_cache_others_could_write_is_ignored(tmp_path, state_dir):
    binary, cache = tool(tmp_path), tmp_path / "cache"
    ask, calls = asker(["1.0"] * 6)
    cached_answer(binary, "--version", ask, str(cache))
    planted = (cache / FILE).read_text().replace('"1.0"', '"9.9"')
    (cache / FILE).write_text(planted)
    assert cached_answer(binary, "--version", ask, str(cache)) == "9.9"  # our own file
    os.chmod(cache / FILE, 0o620)  # group-writable file
    assert cached_answer(binary, "--version", ask, str(cache)) == "1.0"
    assert (cache / FILE).read_text() == planted  # ignored, and left alone
    os.chmod(cache / FILE, 0o600)
    os.chmod(cache, 0o777)  # a dir anyone could swap the file in
    assert cached_answer(binary, "--version", ask, str(cache)) == "1.0"
    os.chmod(cache, 0o700)
    (cache / FILE).rename(cache / "elsewhere")
    (cache / FILE).symlink_to(cache / "elsewhere")  # a link is never followed
    assert cached_answer(binary, "--version", ask, str(cache)) == "1.0"
    assert len(calls) == 4


def test_a_cache_dir_that_is_a_link_is_ignored(tmp_path, state_dir):
    binary, real = tool(tmp_path), tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(real)
    ask, calls = asker(["1.0", "1.0"])
    cached_answer(binary, "--version", ask, str(tmp_path / "cache"))
    cached_answer(binary, "--version", ask, str(tmp_path / "cache"))
    assert len(calls) == 2
    assert not (real / FILE).exists()


def test_a_cache_others_can_write_holds_no_filter_a_run_loads(tmp_path, state_dir):
    """The seccomp filters, the container profile and the rootfs skeleton runs use are
    cached too: from a cache dir another user could write, a run is refused, saying how to
    fix it, instead of loading a filter someone else may have weakened."""
    from conftest import detain_cli, require

    require("bwrap")
    loose = tmp_path / "xdg" / "detain"
    loose.mkdir(parents=True)
    loose.chmod(0o777)
    env = {**os.environ, "XDG_CACHE_HOME": str(loose.parent)}
    done = detain_cli("run", "--backend", "bwrap", "-c", "print(1)", env=env)
    assert done.returncode != 0 and b"1\n" not in done.stdout
    assert b"nobody else can write" in done.stderr and b"chmod 700" in done.stderr
    assert b"Traceback" not in done.stderr
    loose.chmod(0o700)
    done = detain_cli("run", "--backend", "bwrap", "-c", "print(1)", env=env)
    assert done.returncode == 0 and done.stdout == b"1\n", done.stderr
