"""What to run: a script, a code string or a module, with its arguments and input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DetainError

KINDS = ("script", "code", "module")


@dataclass(frozen=True)
class Job:
    """One unit of untrusted work. `stdin` is bytes, a readable fd, or None for no input."""

    kind: str
    target: str
    args: tuple[str, ...] = ()
    stdin: bytes | int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DetainError(f"unknown job kind {self.kind!r}; expected one of {KINDS}")
        if "\0" in self.target or any("\0" in a for a in self.args):
            raise DetainError("job target and arguments cannot contain NUL bytes")
        if self.kind == "script":
            path = Path(self.target)
            if path.is_symlink():
                # The code under test decides where its links point (a checkout's main.py
                # -> /root/secret would print the secret in a SyntaxError).
                raise DetainError(f"script {self.target!r} is a symlink: detain follows no "
                                  "link in the code under test; pass the file's own path")
            if not path.is_file():
                raise DetainError(f"script {self.target!r} does not exist or is not a file")
            if not os.access(path, os.R_OK):
                raise DetainError(f"script {self.target!r} is not readable by you")
        if self.kind == "module" and not all(p.isidentifier() for p in self.target.split(".")):
            raise DetainError(f"-m {self.target!r}: not a dotted module name")

    @classmethod
    def script(cls, path: str | os.PathLike, *args: str, stdin: bytes | int | None = None) -> Job:
        return cls("script", os.fspath(path), tuple(args), stdin)

    @classmethod
    def code(cls, source: str, *args: str, stdin: bytes | int | None = None) -> Job:
        return cls("code", source, tuple(args), stdin)

    @classmethod
    def module(cls, name: str, *args: str, stdin: bytes | int | None = None) -> Job:
        return cls("module", name, tuple(args), stdin)

    def describe(self) -> dict:
        target = self.target if self.kind != "code" else self.target[:200]
        return {"kind": self.kind, "target": target, "args": list(self.args)}
