"""Reliability, for real: long runs leak nothing, parallel runs stay apart, faults end in
clear errors, and bad input ends in one line with exit status 2."""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detain
from conftest import ROOT, detain_cli, leftovers, require
from detain.backends import AUTO_ORDER, BACKENDS, probe
from detain.config import load_policy
from detain.errors import DetainError
from detain.policy import CopyOut, Mount, Policy


def _default_backend() -> str:
    """bwrap, the level-2 backend every Linux host with user namespaces has (auto may pick a
    VM here, whose start-up would turn 2,000 runs into hours); DETAIN_SOAK_BACKEND wins."""
    wanted = os.environ.get("DETAIN_SOAK_BACKEND")
    if wanted:
        return wanted
    candidates = ("bwrap", *AUTO_ORDER)
    return next(n for n in candidates if BACKENDS[n].level >= 2 and probe(n).available)


def _footprint(state_dir: Path) -> dict[str, int]:
    """Everything a run could leak, counted from this process and the host."""
    me = os.getpid()
    children = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == me:
                    children += 1
            except (OSError, IndexError, ValueError):
                continue
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(os.listdir("/proc/self/task")),
        "run_dirs": sum(p.name.startswith("run-") for p in state_dir.iterdir()),
        "temp_entries": len(os.listdir(tempfile.gettempdir())),
        "mounts": len(Path("/proc/self/mountinfo").read_text().splitlines()),
        # This process's runs only: other detain processes on the host come and go.
        "cgroups": len(list(Path("/sys/fs/cgroup").glob(f"*/detain/run-{me}-*")))
        + len(list(Path("/sys/fs/cgroup").glob(f"detain/run-{me}-*"))),
        "children": children,
    }


CODES = [("print('ok')", b"ok\n"),
         ("open('f', 'w').write('x' * 4096); print(len(open('f').read()))", b"4096\n"),
         ("import os\nif os.fork() == 0:\n    import time; time.sleep(30)\nprint('forked')",
          b"forked\n")]


def _soak(runs: int, state_dir: Path, warm: int = 0) -> None:
    name = _default_backend()
    box = detain.Sandbox(Policy().merge({"backend": name, "timeout": 30}, "soak"), warm=warm)
    for code, _ in CODES * 3:  # warm caches (seccomp filter, images) before the baseline
        box.run(detain.Job.code(code))
    box.wait_warm()
    time.sleep(0.3)
    before = _footprint(state_dir)
    times = []
    for number in range(runs):
        code, expected = CODES[number % len(CODES)]
        started = time.monotonic()
        result = box.run(detain.Job.code(code))
        times.append(time.monotonic() - started)
        assert result.error is None and result.stdout == expected, (number, result.error)
    box.wait_warm()
    time.sleep(0.5)
    after = _footprint(state_dir)
    box.close()
    tenth = max(1, runs // 10)
    trend = [statistics.median(times[i:i + tenth]) * 1000 for i in range(0, runs, tenth)]
    print(f"\n{runs} runs on {name} ({warm} warm spares): median ms per tenth: "
          + " ".join(f"{ms:.0f}" for ms in trend))
    print(f"footprint before {before}\nfootprint after  {after}")
    grown = {k: (before[k], after[k]) for k in before if after[k] > before[k]
             and not (k == "temp_entries" and after[k] - before[k] <= 2)}
    assert not grown, f"grew over {runs} runs: {grown}"
    assert trend[-1] <= trend[0] * 1.5 + 20, f"per-run time drifted: {trend}"
    assert not leftovers(state_dir)


def test_short_soak_leaks_nothing(state_dir):
    _soak(100, state_dir)


@pytest.mark.soak
@pytest.mark.parametrize("warm", [0, 2])
def test_soak_2000_runs(state_dir, warm):
    _soak(2000, state_dir, warm)


PARALLEL = 32
NEIGHBOUR = """
import json, os, sys, time
token = sys.argv[1]
open('mine-' + token, 'w').close()
time.sleep(1.5)
seen = []
for pid in os.listdir('/proc'):
    try:
        seen.append(open('/proc/%s/cmdline' % pid, 'rb').read().decode('utf-8', 'replace'))
    except (OSError, ValueError):
        pass
listing = {}
for path in ('.', '..', '/run/detain', '/tmp', os.environ.get('DETAIN_STATE_DIR', '/nowhere')):
    try:
        listing[path] = sorted(os.listdir(path))
    except OSError as exc:
        listing[path] = type(exc).__name__
print(json.dumps({'token': token, 'scratch': sorted(os.listdir('.')), 'procs': seen,
                  'listing': listing}))
"""


def test_32_parallel_runs_are_correct_and_isolated():
    name = _default_backend()
    require(name)
    box = detain.Sandbox(Policy().merge({"backend": name, "timeout": 120}, "parallel"))
    tokens = [f"job{number:02d}x{random.randrange(10**8):08d}" for number in range(PARALLEL)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(lambda t: box.run(detain.Job.code(NEIGHBOUR, t)), tokens))
    for token, result in zip(tokens, results, strict=True):
        assert result.status == 0, (result.error, result.stderr[-500:])
        seen = json.loads(result.stdout)
        assert seen["token"] == token
        assert seen["scratch"] == [f"mine-{token}"], seen["scratch"]
        others = [t for t in tokens if t != token]
        text = json.dumps(seen["procs"]) + json.dumps(seen["listing"])
        assert not [t for t in others if t in text], f"{token} saw another job"


@pytest.mark.slow
def test_killing_detain_at_random_moments_leaves_nothing(state_dir):
    name = _default_backend()
    rng = random.Random(int(os.environ.get("DETAIN_FAULT_SEED", "0")) or None)
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
            "with open('x', 'w') as f:\n    f.write('y' * 100000)\ntime.sleep(60)")
    killed = set()
    for _ in range(8):
        how = rng.choice([signal.SIGKILL, signal.SIGTERM])
        cli = subprocess.Popen([sys.executable, "-m", "detain", "run", "--backend", name,
                                "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        killed.add(cli.pid)
        time.sleep(rng.uniform(0, 1.5))  # before, during or after the sandbox starts
        cli.send_signal(how)
        _, err = cli.communicate(timeout=30)
        assert b"Traceback" not in err, err.decode()
    assert detain.run(code="print('next')", backend=name).stdout == b"next\n"
    time.sleep(0.3)
    assert not leftovers(state_dir, killed | {os.getpid()})


def _one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    err = done.stderr.decode()
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    return err


def test_scratch_disk_full_is_the_jobs_error_not_detains(backend):
    code = ("try:\n    open('big', 'wb').write(b'x' * (8 << 20))\nexcept OSError as exc:\n"
            "    print('full', type(exc).__name__)")
    from conftest import run
    result = run(backend, code, disk="1M")
    assert result.error is None
    assert result.stdout.startswith(b"full"), result.stdout


@pytest.mark.skipif(not ROOT, reason="mounting a tiny tmpfs needs root")
def test_full_state_dir_gives_one_line(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        with open(full / "filler", "wb") as handle:
            try:
                handle.write(b"x" * (1 << 20))
            except OSError:
                pass
        env = {**os.environ, "DETAIN_STATE_DIR": str(full / "state")}
        done = detain_cli("run", "--backend", "bwrap", "-c", "print(1)", env=env, timeout=60)
        if done.returncode != 0:
            _one_line_error(done, "detain: error:")
    finally:
        subprocess.run(["umount", "-l", str(full)], check=True)


def test_missing_bwrap_binary_is_named_in_one_line():
    env = {**os.environ, "DETAIN_BWRAP": "/nonexistent/bwrap"}
    done = detain_cli("run", "--backend", "bwrap", "-c", "print(1)", env=env, timeout=60)
    _one_line_error(done, "DETAIN_BWRAP", "/nonexistent/bwrap")


@pytest.mark.skipif(not ROOT, reason="only root has a cgroup tree to take away")
def test_unwritable_cgroup_tree_runs_or_says_why():
    """In a private mount namespace /sys/fs/cgroup is made read-only under detain."""
    script = (
        "import ctypes, glob, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.unshare(0x20000) == 0\n"
        "assert libc.mount(b'none', b'/', None, 16384 | (1 << 18), None) == 0\n"
        "for path in ['/sys/fs/cgroup'] + glob.glob('/sys/fs/cgroup/*'):\n"
        "    libc.mount(None, path.encode(), None, 4096 | 32 | 1 | 16384, None)\n"
        "from detain.cli.main import main\n"
        "sys.exit(main(['run', '--backend', 'bwrap', '--json', '-', '-c', 'print(7)']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    if done.returncode == 0:
        assert json.loads(done.stdout)["assurance"]["cgroup"] is None
    else:
        _one_line_error(done, "cgroup")


# --- bad input: every value either works or is one line and exit status 2 -------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | TEXT
                      | st.floats(allow_nan=True), lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
KEYS = st.sampled_from(["backend", "min_level", "network", "profile", "python", "env", "mount",
                        "copy_out", "timeout", "cpu", "memory", "processes", "disk", "output",
                        "open_files", "requirements", "with_packages", "wheelhouse",
                        "open-files", "min-level", "bogus"]) | TEXT
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()
                               if v is not None) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    return json.dumps(value) if value is not None else '""'


@FAST
@given(st.dictionaries(KEYS, VALUES, max_size=4))
def test_policy_files_load_or_fail_clearly(tmp_path, table):
    path = tmp_path / "policy.toml"
    path.write_text("\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in table.items()))
    try:
        load_policy(path, project_dir=None)
    except DetainError as exc:
        assert "\n" not in str(exc)


@FAST
@given(st.binary(max_size=200))
def test_garbage_policy_files_fail_clearly(tmp_path, data):
    path = tmp_path / "junk.toml"
    path.write_bytes(data)
    try:
        load_policy(path, project_dir=None)
    except DetainError as exc:
        assert "\n" not in str(exc).rstrip()


@FAST
@given(TEXT)
def test_mount_specs_parse_or_fail_clearly(spec):
    try:
        Mount.parse(spec)
    except DetainError as exc:
        assert str(exc).startswith("--mount")


@FAST
@given(TEXT)
def test_copy_out_specs_parse_or_fail_clearly(spec):
    try:
        parsed = CopyOut.parse(spec)
    except DetainError as exc:
        assert str(exc).startswith("--copy-out")
    else:
        assert parsed.sandbox == "/scratch" or parsed.sandbox.startswith("/scratch/")
        assert ".." not in parsed.sandbox.split("/")


FLAGS = st.sampled_from(["--timeout", "--cpu", "--memory", "--processes", "--disk", "--output",
                         "--open-files", "--env", "--mount", "--copy-out", "--min-level",
                         "--profile", "--backend", "--python", "--policy"])


@FAST
@given(st.lists(st.tuples(FLAGS, TEXT), max_size=4))
def test_cli_flags_parse_or_exit_2(flags):
    from detain.cli.parser import build_parser
    from detain.cli.run_cmd import policy_from_args

    argv = ["run"] + [part for flag, value in flags for part in (flag, value)] + ["-c", "pass"]
    try:
        args = build_parser().parse_args(argv)
        policy_from_args(args)
    except SystemExit as exc:
        assert exc.code == 2
    except DetainError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("argv", [
    ["run", "--memory", "lots", "-c", "pass"], ["run", "--timeout", "-1", "-c", "pass"],
    ["run", "--mount", "/nonexistent:/mnt/x", "-c", "pass"],
    ["run", "--copy-out", "../etc:/tmp/x", "-c", "pass"],
    ["run", "--env", "1BAD=x", "-c", "pass"], ["run", "--policy", "/nonexistent.toml", "-c", "x"],
    ["run", "--backend", "nope", "-c", "pass"], ["run", "--processes", "0", "-c", "pass"],
])
def test_bad_cli_input_is_one_line_and_exit_2(argv):
    _one_line_error(detain_cli(*argv, timeout=60), "error")


@settings(max_examples=6, deadline=None)
@given(st.lists(st.text("abcXYZ019_-.", min_size=1, max_size=12), min_size=1, max_size=3))
def test_copy_out_of_generated_paths_works_or_is_noted(tmp_path_factory, parts):
    require("bwrap")
    dest = tmp_path_factory.mktemp("copy")
    relative = "/".join(p for p in parts if p not in (".", ".."))
    if not relative:
        return
    code = (f"import os\nos.makedirs(os.path.dirname({relative!r}) or '.', exist_ok=True)\n"
            f"open({relative!r}, 'w').write('payload')")
    result = detain.run(code=code, backend="bwrap", copy_out=[f"{relative}:{dest}"])
    assert result.error is None
    copied = list(dest.rglob("*"))
    assert result.copied_out or result.notes, (copied, result.notes)
    for path in copied:
        assert path.resolve().is_relative_to(dest.resolve())

