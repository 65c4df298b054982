"""Limits are really hit, and end the run with the documented status."""

import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, leftovers, run


def test_infinite_loop_times_out(backend):
    started = time.monotonic()
    result = run(backend, "while True: pass", timeout=2)
    elapsed = time.monotonic() - started
    assert result.timed_out and result.status == 124
    assert elapsed < 2 + 2, f"took {elapsed:.1f} s"


def test_sleeping_job_times_out(backend):
    result = run(backend, "import time; time.sleep(60)", timeout=1)
    assert result.status == 124


def test_memory_limit(backend):
    code = ("blocks = []\nwhile len(blocks) < 2048:\n    blocks.append(b'x' * (1 << 20))\n"
            "print('allocated 2 GiB')")
    # One process: per-process memory (all an ordinary user may get) is enough to stop it.
    result = run(backend, code, memory="256M", limits_scope="per-process", timeout=60)
    assert result.status == 137, (result.stdout, result.stderr, result.notes)
    assert result.limit == "memory"
    assert b"allocated 2 GiB" not in result.stdout


def test_cpu_limit(backend):
    result = run(backend, "while True: pass", cpu=1, timeout=20)
    assert result.limit == "cpu" and result.status == 137, (result.signal, result.cpu_seconds)


def test_disk_cap_stops_writes(backend):
    code = textwrap.dedent("""
        written = 0
        chunk = b'x' * (1 << 20)
        try:
            with open('big.bin', 'wb') as handle:
                for _ in range(1024):
                    handle.write(chunk)
                    written += len(chunk)
        except OSError as exc:
            print('stopped', type(exc).__name__)
        import os
        print(written, os.path.getsize('big.bin'))
    """)
    # One file: the per-file cap (all some backends give an ordinary user) must stop it.
    result = run(backend, code, disk="64M", limits_scope="per-process", timeout=60)
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("stopped"), result.stdout
    size = int(lines[-1].split()[1])
    assert size <= 64 << 20


def test_output_is_capped_with_a_visible_marker(backend):
    code = ("import sys\nline = b'y' * 1023 + b'\\n'\n"
            "for _ in range(100 * 1024): sys.stdout.buffer.write(line)")
    result = run(backend, code, output="1M", timeout=60)
    assert result.stdout_truncated
    assert len(result.stdout) < (1 << 20) + 200
    assert result.stdout.endswith(b"[detain: stdout truncated after 1048576 bytes]\n")


def test_detain_stays_small_under_100_mib_of_output(tmp_path):
    """What a 100 MiB flood adds to detain's own peak memory, in a process of its own:
    a first quiet run sets the baseline (backend, imports, buffers), so the test measures
    the flood, not how large the rest of detain or a loaded machine makes the process."""
    probe = textwrap.dedent("""
        import resource, detain
        detain.run(code="print('quiet')", timeout=60)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        code = ("import sys\\nblock = b'z' * (1 << 20)\\n"
                "for _ in range(100): sys.stdout.buffer.write(block)")
        result = detain.run(code=code, timeout=60)
        assert result.stdout_truncated, result.stderr
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    before, after = (int(n) for n in done.stdout.split()[-2:])
    assert after - before < 32 * 1024, f"the flood added {(after - before) / 1024:.0f} MiB"


def test_fork_bomb_is_contained_and_leaves_nothing(backend, state_dir):
    # Harmless probe first: only a backend that demonstrably caps processes gets the bomb.
    check = run(backend, "import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[0])",
                processes=32)
    assert check.stdout == b"32\n", check.stdout
    if backend == "process" and not ROOT:
        pytest.skip("process backend unprivileged: RLIMIT_NPROC counts all of your processes")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run(backend, bomb, processes=32, timeout=4)
    # Contained either way: the bomb spins at its process cap until the timeout, or (gVisor)
    # the runtime ends the whole sandbox when the cap is hit, reported as that limit.
    assert result.status == 124 or (result.status == 137 and result.limit == "processes"), (
        result.status, result.limit, result.notes)
    time.sleep(0.2)
    assert not leftovers(state_dir)


def test_a_forged_memory_record_does_not_fake_a_limit(backend):
    """The job can write to the launcher's channel; its word alone never makes a limit hit."""
    code = textwrap.dedent("""
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b'{"type":"exit","memory_error":true}\\n')
            except OSError:
                pass
        print('done')
    """)
    result = run(backend, code)
    assert result.stdout == b"done\n"
    assert result.limit is None and result.status == 0
