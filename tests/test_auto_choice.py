"""What `auto` picks, why, and at what cost, as `doctor`, `--json` and `--summary` show it.

The rule (backends/auto.py): the strongest backend that runs here, never the micro-VM
without KVM, and only one that can do what the job needs (requirements, an allow-list,
mounts, an image, a trace).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import tempfile

import pytest

from conftest import ROOT, detain_cli
from detain.backends import BACKENDS, Probe, choose_for, probe
from detain.backends.auto import COSTS, Needs, pick
from detain.errors import BackendUnavailable
from detain.policy import Policy


@pytest.fixture(scope="module")
def doctor() -> dict:
    done = detain_cli("doctor", "--json", text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _emulated_microvm(doctor: dict) -> bool:
    row = next(r for r in doctor["backends"] if r["backend"] == "microvm")
    return row["available"] and row["details"].get("accel") != "kvm"


def test_doctor_says_what_auto_picks_why_and_its_cost(doctor):
    choice = doctor["auto_choice"]
    assert doctor["auto"] == choice["backend"]
    assert choice["reason"].startswith("the strongest backend of level >= 2 that runs here")
    assert choice["expected_cost"].startswith("about ")
    if _emulated_microvm(doctor):
        assert choice["backend"] != "microvm"
        assert "passed over microvm: emulated without KVM" in choice["reason"]


def test_doctor_piped_cuts_and_wraps_nothing(doctor):
    done = detain_cli("doctor", text=True)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    lines = done.stdout.splitlines()
    for row in doctor["backends"]:
        if not row["available"]:  # every reason whole, on its row's one line
            assert any(row["reason"] in line and row["backend"] in line for line in lines), \
                row["reason"]
    choice = doctor["auto_choice"]
    top = next(line for line in lines if line.startswith("auto (min level 2) picks: "))
    assert top == (f"auto (min level 2) picks: {choice['backend']} (level {choice['level']}): "
                   f"{choice['reason']}; expected cost {choice['expected_cost']}")


def test_doctor_says_how_to_start_a_docker_engine_without_systemd():
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = detain_cli("doctor", "--json", text=True, env=env)
    row = next(r for r in json.loads(done.stdout)["backends"] if r["backend"] == "docker")
    if not row["reason"].startswith("no Docker engine answers"):
        pytest.skip(f"docker is not installed here: {row['reason']}")
    if os.path.isdir("/run/systemd/system"):
        assert row["reason"].endswith("with systemd: systemctl start docker")
    else:
        assert row["reason"].endswith("this host has no systemd, so start it by hand as root: "
                                      "dockerd > /var/log/dockerd.log 2>&1 &")


def test_doctor_says_whose_uid_the_process_backend_runs_the_job_as(doctor):
    row = next(r for r in doctor["backends"] if r["backend"] == "process")
    if ROOT:
        assert row["mechanism"].endswith("a fresh unprivileged uid per run")
    else:
        assert f"runs the job as you (uid {os.geteuid()})" in row["mechanism"]


@pytest.mark.skipif(not ROOT, reason="needs root to become an ordinary user")
def test_doctor_as_an_ordinary_user_says_the_job_runs_as_them():
    from as_user import REPO, ensure_user, reachable_python

    python = reachable_python()
    if python is None:
        pytest.skip("no interpreter of this version outside /root for an ordinary user")
    user = ensure_user()
    home = tempfile.mkdtemp(prefix="detain-doctor-home-")  # reachable: not under tmp_path
    shutil.chown(home, user, user)
    path = os.pathsep.join([str(REPO / "src"), sysconfig.get_paths()["purelib"]])
    try:
        done = subprocess.run(["runuser", "-u", user, "--", "env", "-i", f"PYTHONPATH={path}",
                               f"HOME={home}", "DETAIN_CONFIG=", python, "-m", "detain",
                               "doctor"], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if done.returncode != 0 and "Permission denied" in done.stderr:
        pytest.skip("the checkout is not readable by an ordinary user")
    assert done.returncode == 0, done.stderr
    uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout)
    row = next(line for line in done.stdout.splitlines() if line.startswith("│ process "))
    assert f"runs the job as you (uid {uid}): it can read and write what you can" in row
    assert "unprivileged uid" not in row


def test_json_and_summary_carry_the_choice(doctor):
    done = detain_cli("run", "--json", "-", "--summary", "-c", "print(6 * 7)", text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["backend_choice"] == doctor["auto_choice"]
    assert result["backend"] == doctor["auto"]
    summary = " ".join(done.stderr.replace("│", " ").split())
    assert f"backend {doctor['auto']} (level" in summary
    assert f"why {doctor['auto']}: the strongest backend of level >= 2" in summary
    assert "expected cost about" in summary


def test_a_named_backend_says_it_was_asked_for():
    done = detain_cli("run", "--backend", "process", "--min-level", "1", "--json", "-",
                      "-c", "pass", text=True)
    assert done.returncode == 0, done.stderr
    choice = json.loads(done.stdout)["backend_choice"]
    assert choice["backend"] == "process"
    assert choice["reason"] == "asked for by name (--backend or the policy)"


def test_an_allow_list_job_gets_a_backend_with_its_own_network_namespace():
    done = detain_cli("run", "--allow-host", "example.invalid", "--json", "-", "-c", "pass",
                      text=True)
    if done.returncode == 2 and "no backend" in done.stderr:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["backend"] == "bwrap"
    assert "can do what this job needs (a network allow-list)" in \
        result["backend_choice"]["reason"]


@pytest.mark.parametrize("settings, need", [
    ({"with_packages": ["attrs"], "wheelhouse": "/"}, "requirements"),
    ({"mount": ["/etc/hostname:/mnt/h:rw"]}, "writable mounts"),
    ({"mount": ["/etc/hostname:/mnt/h"]}, "mounts"),
])
def test_auto_picks_only_a_backend_that_can_do_what_the_job_needs(settings, need):
    policy = Policy().merge(settings, "test")
    _, choice = choose_for(policy)
    assert Needs.of(policy).unmet(choice.backend) is None
    assert f"can do what this job needs ({need})" in choice.reason
    if need != "mounts":
        assert choice.backend != "microvm"
    assert choice.backend not in ("process", "landlock", "restricted")


def test_the_micro_vm_is_used_when_asked_for_by_name():
    found = probe("microvm")
    if not found.available:
        pytest.skip(found.reason)
    _, choice = choose_for(Policy().merge({"backend": "microvm"}, "test"))
    assert choice.backend == "microvm"
    if dict(found.details).get("accel") != "kvm":
        assert choice.expected_cost.startswith("about 1-3 s a run: the VM is emulated")


# The rule itself, over what each backend's probe could say on other hosts (KVM or not):
def _host(**available: dict[str, str]):
    """A probe function for a host where only `available` backends run (with details)."""
    def answer(name: str) -> Probe:
        if name in available:
            return Probe(True, details=tuple(available[name].items()))
        return Probe(False, f"{name} is not installed")
    return answer


@pytest.mark.parametrize("accel, picked", [("tcg", "bwrap"), ("kvm", "microvm")])
def test_the_micro_vm_is_a_default_only_with_kvm(accel, picked):
    host = _host(microvm={"accel": accel}, bwrap={})
    assert pick("auto", 2, Needs(), host).backend == picked


def test_requirements_never_go_to_the_micro_vm_even_with_kvm():
    host = _host(microvm={"accel": "kvm"}, bwrap={})
    choice = pick("auto", 2, Needs(requirements=True), host)
    assert choice.backend == "bwrap"
    assert "passed over microvm: cannot install requirements" in choice.reason


def test_nothing_that_fits_is_one_refusal_naming_each_reason():
    host = _host(microvm={"accel": "tcg"}, landlock={})
    with pytest.raises(BackendUnavailable) as refused:
        pick("auto", 2, Needs(mounts=True), host)
    message = str(refused.value)
    assert "microvm (emulated without KVM, about 1-3 s a run (--backend microvm uses it " \
           "anyway))" in message
    assert "landlock (no mount namespace for --mount)" in message


def test_cli_refusal_is_one_line_with_exit_2():
    done = detain_cli("run", "--min-level", "4", "--allow-host", "example.invalid", "-c",
                      "pass", text=True)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("detain: error: no backend of level >= 4")
    if probe("gvisor").available:
        assert "gvisor (no network namespace of its own for the allow-list proxy)" in lines[0]


def test_every_linux_backend_has_a_cost_and_a_mount_capability():
    for name, entry in BACKENDS.items():
        assert entry.mounts in ("none", "ro", "rw"), name
        assert entry.system != "Linux" or name in COSTS, name
