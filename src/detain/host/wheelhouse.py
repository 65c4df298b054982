"""Fetch wheels on the host, for installing inside a sandbox without network.

`pip download --only-binary=:all:` only downloads: a wheel's metadata is a file, so no
package code runs on the host (an sdist would need a build, and is refused). The
requirements are validated first: only `name[extras] specifier; markers` lines pass, never
pip options, paths or URLs, which could make pip build a local directory on the host.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import DetainError
from ..policy import Policy

TIMEOUT = 300


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file, refusing anything else it may hold."""
    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if "@" in line or line.startswith("-") or "/" in line.split(";")[0]:
            raise DetainError(f"{path}: {line!r} is not a plain requirement (options, paths "
                              "and URLs are not fetched on the host: they could run a build)")
        lines.append(line)
    return list(Policy().merge({"with_packages": lines}, str(path)).with_packages)


def download(requirements: list[str], dest: Path, python_version: str) -> list[Path]:
    """Download wheels for `requirements` (and their dependencies) into `dest`."""
    checked = list(Policy().merge({"with_packages": requirements}, "requirements").with_packages)
    major_minor = ".".join(python_version.split(".")[:2])
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:",
            "--python-version", major_minor, "--dest", str(dest), "--no-input",
            "--disable-pip-version-check", "--quiet", *checked]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise DetainError(f"pip download did not finish within {TIMEOUT} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DetainError(f"could not fetch wheels for {', '.join(checked)} on the host "
                          f"(wheels only, nothing is built here): {last}")
    return sorted(dest.glob("*.whl"))
