"""The micro-VM backend's machinery: guest kernel and image, saved VM state, channels.

Everything lives under `$XDG_CACHE_HOME/detain/microvm` (default ~/.cache/detain/microvm):
the unpacked kernel, one image per (kernel, interpreter, guest code) digest, and one saved
VM per (image, accelerator, RAM size, boot message: interpreter flags and seccomp filter).
Changing any input changes a digest, so stale artifacts are never used; `detain setup
microvm` prepares and verifies all of it.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/detain/microvm`, else in the account's home from the password
    database: a job's $HOME override must not hide the prepared VM (nor rebuild it)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:
            home = os.path.expanduser("~")
        base = os.path.join(home, ".cache")
    return Path(base) / "detain" / "microvm"
