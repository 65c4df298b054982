"""Which Python runs inside the sandbox, and which host directories make it work.

The job never gets detain's own virtualenv: the base interpreter behind it is used, in
isolated mode, so the job sees the stdlib and nothing that happens to be installed with
detain.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from ..errors import DetainError

SYSTEM_DIRS = ("/usr",)
_PROBE = ("import sys, json; print(json.dumps([sys.base_prefix, sys.base_exec_prefix, "
          "'%d.%d.%d' % sys.version_info[:3]]))")


@dataclass(frozen=True)
class Interpreter:
    executable: str
    prefixes: tuple[str, ...]
    version: str

    @property
    def bind_dirs(self) -> tuple[str, ...]:
        """Host dirs the sandbox needs beyond the system dirs every backend binds."""
        dirs = []
        for path in (*self.prefixes, os.path.dirname(self.executable)):
            if not any(path == s or path.startswith(s + "/") for s in SYSTEM_DIRS) and \
                    not any(path == d or path.startswith(d + "/") for d in dirs):
                dirs.append(path)
        return tuple(dirs)


@functools.lru_cache(maxsize=8)
def find_interpreter(python: str | None = None) -> Interpreter:
    """The interpreter for jobs: `python` if given, else the base of the one running detain."""
    if python is None:
        version = "%d.%d.%d" % sys.version_info[:3]
        return Interpreter(os.path.realpath(sys.executable),
                           tuple(dict.fromkeys((sys.base_prefix, sys.base_exec_prefix))), version)
    executable = os.path.realpath(python)
    try:
        probe = subprocess.run([executable, "-I", "-S", "-c", _PROBE], env={}, text=True,
                               capture_output=True, timeout=30, check=True)
        base, exec_base, version = json.loads(probe.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise DetainError(f"--python {python}: could not start it as a Python 3 interpreter "
                          f"({exc}); pass the path of a working python3") from None
    if tuple(int(p) for p in version.split(".")[:2]) < (3, 8):
        raise DetainError(f"--python {python}: Python {version} is too old; detain's launcher "
                          "needs 3.8 or newer")
    # A venv's python resolves to its base installation; the stdlib lives under base_prefix.
    return Interpreter(executable, tuple(dict.fromkeys((base, exec_base))), version)

