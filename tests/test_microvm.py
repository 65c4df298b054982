"""The micro-VM backend's own promises; the shared contract runs in the generic tests.

VM tests boot for real (a restore of the saved VM, about a second each under TCG), so
they are few: a fresh, unique machine per run, the assurance it reports, refusals of what
it cannot do, and nothing left behind when detain itself is SIGKILLed mid-run.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

import detain
from conftest import require, run
from detain.errors import ProtectionError
from detain.microvm import channel, slots
from detain.microvm.image import _cpio
from detain.microvm.setup import ram_mib


def test_status_from_the_guest_is_parsed_defensively():
    good = json.dumps({"exit": 3, "signal": None, "utime": 0.5, "stime": 0.1,
                       "maxrss_kib": 1000, "oom_kills": 1, "kernel": "6.1"}).encode()
    status = channel.parse_status(good + b"\n")
    assert status.returncode == 3 and status.oom_kills == 1 and status.kernel == "6.1"
    assert channel.parse_status(json.dumps({"signal": 9}).encode()).returncode == -9
    for hostile in (b"", b"\xff\xfe", b"[1, 2]", b"{" * 100000, b"x" * (1 << 20),
                    json.dumps({"exit": 10 ** 30}).encode(), b'{"exit": "0"}'):
        status = channel.parse_status(hostile)
        assert status is None or status.returncode is None
    typed = channel.parse_status(json.dumps({"exit": True, "utime": "a", "kernel": 5,
                                             "error": "x" * 10000}).encode())
    assert typed.exit_code is None and typed.utime == 0.0 and typed.kernel is None
    assert len(typed.error) == 2000


def test_job_message_layout_matches_the_guest_reader():
    message = channel.encode({"argv": ["python"]}, {"seed": b"abc", "stdin": b""})
    (size,) = struct.unpack(">I", message[:4])
    header = json.loads(message[4:4 + size])
    assert header["blobs"] == [["seed", 3], ["stdin", 0]]
    assert message[4 + size:] == b"abc"


def test_guest_ram_is_a_power_of_two_above_the_limit():
    assert ram_mib(256 << 20) == 512
    assert ram_mib(512 << 20) == 1024
    assert ram_mib(1 << 20) == 256


def test_initramfs_archive_is_valid_newc(tmp_path):
    archive = tmp_path / "a.cpio"
    archive.write_bytes(_cpio([("bin", 0o40755, b""), ("bin/x", 0o100755, b"hello")]))
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=archive.open("rb"),
                             capture_output=True, text=True)
    if listing.returncode != 0 and "not found" in listing.stderr:
        pytest.skip("cpio is not installed")
    assert listing.stdout.split() == ["bin", "bin/x"]


def test_slots_queue_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("DETAIN_MICROVM_MAX", "1")
    first = slots.acquire(tmp_path)
    assert slots.acquire(tmp_path, deadline=time.monotonic() + 0.1) is None
    os.close(first)
    second = slots.acquire(tmp_path, deadline=time.monotonic() + 1)
    assert second is not None
    os.close(second)


@pytest.fixture
def microvm():
    require("microvm")
    return "microvm"


def test_every_run_is_a_fresh_unique_machine(microvm):
    code = ("import os, time, pathlib\n"
            "marker = pathlib.Path('/tmp/left-by-an-earlier-run')\n"
            "print(marker.exists(), os.urandom(16).hex(), round(time.time()))\n"
            "marker.write_text('x')\n")
    first, second = run(microvm, code), run(microvm, code)
    for result in (first, second):
        assert result.status == 0, (result.stderr, result.error)
    (seen1, random1, _), (seen2, random2, clock2) = (
        r.stdout.decode().split() for r in (first, second))
    assert seen1 == seen2 == "False"
    assert random1 != random2, "the restored CRNG state was not refreshed"
    assert abs(int(clock2) - time.time()) < 60, "the guest clock is the snapshot's"


def test_assurance_names_the_accelerator_and_the_guest_kernel(microvm):
    result = run(microvm, "pass")
    assurance = result.assurance
    assert assurance["accel"] in ("tcg", "kvm")
    assert assurance["guest_kernel_is_host_kernel"] is False
    assert assurance["guest_kernel"] != assurance["host_kernel"]
    assert assurance["network_interfaces"] == ["lo"]
    assert assurance["uid"] == 1000 and assurance["seccomp"] is True


def test_what_the_vm_cannot_do_is_refused(microvm, tmp_path):
    with pytest.raises(ProtectionError, match="--backend bwrap"):
        run(microvm, "pass", mount=[f"{tmp_path}:/mnt/out:rw"])
    with pytest.raises(ProtectionError, match="network"):
        run(microvm, "pass", network=["pypi.org"])


@pytest.mark.slow
def test_sigkill_of_detain_mid_run_leaves_no_qemu(microvm, state_dir):
    probe = ("import detain; detain.run(code='import time; time.sleep(60)', "
             "backend='microvm', min_level=4, timeout=60)")
    child = subprocess.Popen([sys.executable, "-c", probe], env=os.environ.copy())
    try:
        qemu = []
        deadline = time.monotonic() + 60
        while not qemu and time.monotonic() < deadline:
            time.sleep(0.2)
            qemu = _qemu_children(child.pid)
        assert qemu, "no QEMU process appeared"
        child.send_signal(signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in qemu) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in qemu), "QEMU outlived detain"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result = run(microvm, "print('after')")  # its startup sweep removes the dead run's dir
    assert result.stdout == b"after\n"
    assert not [p for p in state_dir.iterdir() if p.name.startswith(f"run-{child.pid}-")]


def _qemu_children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read().rpartition(")")[2].split()
            comm = open(f"/proc/{entry}/comm").read().strip()
        except OSError:
            continue
        if int(stat[1]) == parent and comm.startswith("qemu"):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_vm_output_flood_is_capped(microvm):
    code = ("import sys\nblock = b'z' * (1 << 20)\n"
            "for _ in range(40): sys.stdout.buffer.write(block)")
    result = detain.run(code=code, backend=microvm, min_level=4, output="1M", timeout=60)
    assert result.stdout_truncated and len(result.stdout) < (1 << 20) + 200
