"""Code that runs inside the sandbox. Stdlib only: it starts before anything else exists there.

The launcher loads its sibling helpers (deps.py, restricted.py) by path, so backends show
the sandbox this whole directory, read-only. restricted.py alone also imports
RestrictedPython, which the restricted backend puts on the guest's path.
"""

from pathlib import Path

LAUNCHER = Path(__file__).with_name("launcher.py")
