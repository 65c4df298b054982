"""The one way detain runs pip on the host: download wheels, isolated from where it runs.

`python -m pip` puts the working directory first on sys.path, and detain is often run
from inside the untrusted checkout (`detain pytest` defaults to `.`): a `pip.py`, a `pip/`
package or a stdlib name such as `re.py` there ran as the caller, as root, before any
sandbox existed. So pip runs in isolated mode (`-I`: neither the working directory nor
PYTHON* variables reach sys.path) and from an empty private directory, and only ever
downloads wheels (`--only-binary=:all:`), which runs no package code.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import DetainError

TIMEOUT = 300


def pip_download(requirements: list[str], dest: Path, python_version: str, *,
                 deps: bool = True) -> subprocess.CompletedProcess:
    """`pip download` of wheels for `requirements` into `dest`, for `python_version`."""
    major_minor = ".".join(python_version.split(".")[:2])
    argv = [sys.executable, "-I", "-m", "pip", "download", "--only-binary=:all:",
            "--python-version", major_minor, "--dest", str(dest), "--no-input",
            "--disable-pip-version-check", "--quiet", *([] if deps else ["--no-deps"]),
            "--", *requirements]
    with tempfile.TemporaryDirectory(prefix="detain-pip-") as workdir:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                                  stdin=subprocess.DEVNULL, cwd=workdir, check=False)
        except subprocess.TimeoutExpired:
            raise DetainError(f"pip download did not finish within {TIMEOUT} s") from None
