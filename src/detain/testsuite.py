"""`detain pytest`: a project's test suite, run inside a sandbox, each event tied to a test.

On the host only files move: the project is shown read-only inside, and pytest (with the
project's plain requirements) is fetched as wheels by `pip download --only-binary=:all:`,
which runs no package code. Inside, the requirements go into a throw-away venv (issue 6's
deps step), the guest driver copies the project into scratch and runs pytest with a
timeline plugin, and the timeline comes back through copy-out to attribute events.

The timeline is written inside the suite's own process, where any test can append to it:
it names tests and ties events to them, but nothing detain states as its own (a count, a
verdict) is taken from it. The Result's status is the job's exit status, which the host
observes (cli/pytest_cmd.py shows the timeline's claims only labelled as unverified).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .api import Sandbox
from .attribution import attribute, read_timeline
from .errors import DetainError
from .guest import LAUNCHER
from .host import wheelhouse
from .host.interpreter import find_interpreter
from .job import Job
from .policy import REQUIREMENTS_CAP, SCRATCH, CopyOut, Mount, Policy
from .project_files import read_project_file
from .result import Result

PROJECT_MOUNT = "/mnt/project"
DRIVER = LAUNCHER.with_name("pytest_driver.py")
TIMELINE_DIR = ".detain-tests"
TIMELINE = "tests.jsonl"
PROJECT_REQUIREMENTS = "requirements.txt"
Sink = Callable[[bytes], None]


def suite_policy(policy: Policy, project: Path, wheels: Path, requirements: list[str],
                 out_dir: Path) -> Policy:
    """The policy with the project mounted, pytest and requirements staged, timeline out."""
    return replace(
        policy, mounts=(*policy.mounts, Mount(project, PROJECT_MOUNT)),
        with_packages=("pytest", *requirements), requirements=None, wheelhouse=wheels,
        copy_out=(*policy.copy_out, CopyOut(f"{SCRATCH}/{TIMELINE_DIR}", out_dir)))


def run_suite(project: str | Path, pytest_args: Sequence[str] = (), policy: Policy | None = None,
              stdout: Sink | None = None, stderr: Sink | None = None) -> Result:
    """Run pytest on `project` in a sandbox; the Result's status is pytest's exit status.

    The suite's requirements are the policy's (`requirements`, `with_packages`), else the
    project's requirements.txt.
    """
    root = Path(project).resolve()
    if not root.is_dir():
        raise DetainError(f"{project}: not a directory (give the project's root)")
    policy = policy or Policy()
    if policy.requirements is not None:
        lines = wheelhouse.requirement_lines(policy.requirements)
    else:  # the project's own list: hostile data, read as project_files reads it
        text = read_project_file(root, PROJECT_REQUIREMENTS, REQUIREMENTS_CAP)
        lines = wheelhouse.parse_requirements(text, str(root / PROJECT_REQUIREMENTS)) \
            if text is not None else []
    lines += policy.with_packages
    version = find_interpreter(policy.python).version
    with tempfile.TemporaryDirectory(prefix="detain-pytest-") as tmp:
        wheels, out = Path(tmp) / "wheels", Path(tmp) / "out"
        wheels.mkdir()
        out.mkdir()
        wheelhouse.download(["pytest", *lines], wheels, version)
        job = Job.script(DRIVER, PROJECT_MOUNT, f"{SCRATCH}/{TIMELINE_DIR}/{TIMELINE}",
                         *pytest_args)
        sandbox = Sandbox(suite_policy(policy, root, wheels, lines, out))
        result = sandbox.run(job, stdout=stdout, stderr=stderr)
        calibration, tests = read_timeline(out / TIMELINE)  # the dir's contents land in out
    attribute(result.behaviour, calibration, tests)
    result.copied_out = []  # the timeline was detain's own, already read
    return result
