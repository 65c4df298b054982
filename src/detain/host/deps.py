"""Staging a job's requirements so they can be installed *inside* its sandbox.

The host never runs pip and never opens a wheel: it writes the requirement lines and
copies the wheelhouse's `*.whl` files into the run's job dir, which every backend shows
the sandbox read-only. The guest (`detain/guest/deps.py`) then builds a throw-away venv in
the scratch dir and installs from there, confined exactly like the job, before the job
starts. The venv goes away with the run dir.

Only wheels are installed (no sdist build runs code) and there is no index: the network
is `none`, so a wheelhouse is required.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import PolicyError
from ..policy import Policy

DEPS_DIR = "deps"


def stage(policy: Policy, job_dir: Path, always: bool = False) -> bool:
    """Put requirements.txt and wheelhouse/ under job_dir/deps; False when nothing to do."""
    if not policy.wants_packages and not always:
        return False
    if policy.wants_packages and policy.wheelhouse is None:
        raise PolicyError("--requirements/--with need --wheelhouse DIR: the network is "
                          "'none', so pip has no index to download from")
    deps = job_dir / DEPS_DIR
    wheels = deps / "wheelhouse"
    wheels.mkdir(mode=0o755, parents=True)
    os.chmod(deps, 0o755)
    lines = []
    if policy.requirements is not None:
        lines.append(policy.requirements.read_text(encoding="utf-8", errors="replace"))
    lines += policy.with_packages
    requirements = deps / "requirements.txt"
    requirements.write_text("\n".join(lines) + "\n" if lines else "")
    os.chmod(requirements, 0o644)
    if policy.wheelhouse is not None:
        for entry in os.scandir(policy.wheelhouse):
            if entry.name.endswith(".whl") and entry.is_file():
                shutil.copyfile(entry.path, wheels / entry.name)
                os.chmod(wheels / entry.name, 0o644)
    return True
