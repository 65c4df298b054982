"""Fetch wheels on the host, for installing inside a sandbox without network.

`pip download --only-binary=:all:` only downloads: a wheel's metadata is a file, so no
package code runs on the host (an sdist would need a build, and is refused). The
requirements are validated first: only `name[extras] specifier; markers` lines pass, never
pip options, paths or URLs, which could make pip build a local directory on the host.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DetainError
from ..policy import Policy
from .pip_download import pip_download

MAX_REQUIREMENTS = 1000


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of the caller's requirements file (see `parse_requirements`)."""
    return parse_requirements(path.read_text(encoding="utf-8", errors="replace"), str(path))


def parse_requirements(text: str, source: str) -> list[str]:
    """The requirement lines of requirements text, refusing anything else it may hold."""
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if "@" in line or line.startswith("-") or "/" in line.split(";")[0]:
            raise DetainError(f"{source}: {line!r} is not a plain requirement (options, paths "
                              "and URLs are not fetched on the host: they could run a build)")
        lines.append(line)
        if len(lines) > MAX_REQUIREMENTS:
            raise DetainError(f"{source}: more than {MAX_REQUIREMENTS} requirements; list "
                              "the ones the suite needs")
    return list(Policy().merge({"with_packages": lines}, source).with_packages)


def download(requirements: list[str], dest: Path, python_version: str) -> list[Path]:
    """Download wheels for `requirements` (and their dependencies) into `dest`."""
    checked = list(Policy().merge({"with_packages": requirements}, "requirements").with_packages)
    done = pip_download(checked, dest, python_version)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DetainError(f"could not fetch wheels for {', '.join(checked)} on the host "
                          f"(wheels only, nothing is built here): {last}")
    return sorted(dest.glob("*.whl"))
