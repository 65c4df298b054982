"""Which installed distribution is the package being vetted, named from the host's side.

The import phase tells its audit hook which files belong to the package's dependencies, so
that traffic made through requests is reported at the package's own line (`through
requests`) and a dependency's import-time work is not called the package's. The name of the
package under test comes from the artifact detain fetched (its file name) or the source
tree's pyproject.toml, never from anything the install phase wrote.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from ..guest.package_phase import canonical  # the guest's, stdlib-only: one rule for both

PYPROJECT_CAP = 1 << 20


def project_name(artifact: Path) -> str | None:
    """The project's name for a wheel, an sdist or a source tree; None when unknown."""
    if artifact.is_dir():
        try:
            with open(artifact / "pyproject.toml", "rb") as handle:
                data = tomllib.loads(handle.read(PYPROJECT_CAP).decode("utf-8", "replace"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeError):
            return None
        name = (data.get("project") or {}).get("name") if isinstance(
            data.get("project"), dict) else None
        return canonical(name) if isinstance(name, str) and name else None
    if artifact.name.endswith(".whl"):
        return canonical(artifact.name.split("-", 1)[0])
    stem = re.sub(r"\.(tar\.gz|tar\.bz2|tar\.xz|tgz|zip|tar)$", "", artifact.name)
    name = stem.rpartition("-")[0]
    return canonical(name) if name else None
