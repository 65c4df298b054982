"""Inputs go in through --mount only; results come out through --copy-out only, safely."""

import os

import pytest

from conftest import CONTAINING_BACKENDS, require, run


# landlock has no mount namespace: it refuses --mount (tested in test_landlock.py).
@pytest.fixture(params=[n for n in CONTAINING_BACKENDS if n != "landlock"])
def mounting_backend(request):
    require(request.param)
    return request.param


def test_read_only_mount(mounting_backend, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("payload")
    code = ("print(open('/mnt/in/input.txt').read())\ntry:\n    open('/mnt/in/new', 'w')\n"
            "    print('writable')\nexcept OSError:\n    print('read-only')")
    result = run(mounting_backend, code, mount=[f"{data}:/mnt/in"])
    assert result.stdout == b"payload\nread-only\n", result.stderr
    assert not (data / "new").exists()


def test_a_single_file_mounts_where_its_parent_does_not_exist(mounting_backend, tmp_path):
    """A file's mount point must be a file (gVisor failed to start: "cannot read client
    sync file"), beside a directory mount under the same new parent."""
    (tmp_path / "one.txt").write_text("one")
    (tmp_path / "dir").mkdir()
    code = "import os\nprint(sorted(os.listdir('/data')), open('/data/one.txt').read())"
    result = run(mounting_backend, code,
                 mount=[f"{tmp_path / 'one.txt'}:/data/one.txt", f"{tmp_path / 'dir'}:/data/d"])
    assert result.stdout == b"['d', 'one.txt'] one\n", result.stderr


def test_copy_out_brings_results_back(backend, tmp_path):
    out = tmp_path / "out"
    code = ("import os\nos.makedirs('results/sub')\nopen('results/a.txt', 'w').write('A')\n"
            "open('results/sub/b.bin', 'wb').write(b'B' * 1000)\nos.chmod('results/a.txt', 0o4755)")
    result = run(backend, code, copy_out=[f"results:{out}"])
    assert result.status == 0, result.stderr
    assert (out / "a.txt").read_text() == "A"  # the dir's contents, as cp -r results/. out/
    assert (out / "sub" / "b.bin").read_bytes() == b"B" * 1000
    assert not os.stat(out / "a.txt").st_mode & 0o7111
    assert len(result.copied_out) == 2


def test_copy_out_never_follows_symlinks(backend, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    out = tmp_path / "out"
    code = (f"import os\nos.makedirs('results')\nos.symlink({str(secret)!r}, 'results/link')\n"
            "os.symlink('/etc', 'results/etc')\nos.symlink('/', 'top')\n"
            "open('results/real.txt', 'w').write('real')")
    result = run(backend, code, copy_out=[f"results:{out}", f"top:{out}/top"])
    assert result.status == 0, result.stderr
    copied = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert copied == {"real.txt"}, copied
    assert any("not a regular file" in note for note in result.notes)


def test_copy_out_is_size_capped(backend, tmp_path):
    out = tmp_path / "out"
    code = "open('big', 'wb').write(b'x' * (3 << 20))\nopen('small', 'wb').write(b'y')"
    result = run(backend, code, disk="4M", limits_scope="per-process",  # the cap on copy-out
                 copy_out=[f"big:{out}", f"small:{out}"])
    assert result.status == 0, result.stderr
    assert (out / "big").stat().st_size == 3 << 20
    assert (out / "small").exists()


def test_copy_out_cap_counts_all_files(tmp_path):
    from detain.host.copyout import copy_out
    from detain.policy import CopyOut

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name in "abc":
        (scratch / name).write_bytes(b"x" * 3000)
    report = copy_out(scratch, tuple(CopyOut.parse(f"{n}:{tmp_path}/out") for n in "abc"), 7000)
    assert [os.path.basename(p) for p in report.copied] == ["a", "b"]
    assert report.bytes == 6000 and "cap" in report.skipped[0]


def test_jobs_cannot_see_each_others_scratch(backend):
    first = run(backend, "import os; open('mine', 'w').write('1'); print(os.getcwd())")
    second = run(backend, "import os; print(os.listdir('.'))")
    assert second.stdout == b"[]\n", second.stdout
    assert first.status == 0
