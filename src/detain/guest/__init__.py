"""Code that runs inside the sandbox. Stdlib only: it starts before anything else exists there."""

from pathlib import Path

LAUNCHER = Path(__file__).with_name("launcher.py")
