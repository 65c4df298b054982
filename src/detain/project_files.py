"""Reading a file that ships with the code under test, as the hostile input it is.

A project decides what its files are: `requirements.txt` as a symlink to /etc/shadow made
detain print shadow lines and hand a secret token to host pip as a package name; a FIFO
would block, a huge file would eat the host's memory. So a project file is read only when
it is a regular file right in the project dir, the last component opened without
following a symlink, without blocking, and no larger than a cap.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import DetainError
from .units import format_size


def read_project_file(project: str | os.PathLike, name: str, cap: int) -> str | None:
    """The text of `project/name`; None when there is no such regular file."""
    path = Path(project) / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DetainError(f"{path} is a symlink: detain follows no link in the code "
                              "under test; put the file itself there") from None
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > cap:
            raise DetainError(f"{path} is larger than {format_size(cap)}; detain does not "
                              "read a project file that large")
        data = bytearray()
        while len(data) <= cap and (chunk := os.read(fd, 1 << 16)):
            data += chunk
        if len(data) > cap:
            raise DetainError(f"{path} grew past {format_size(cap)} while being read")
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")
