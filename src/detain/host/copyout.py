"""Bring files out of the sandbox's scratch dir without trusting anything about them.

`--copy-out results:./out` puts what `results` holds in ./out (./out/a.txt), as `cp -r
results/. out/` would; a file (`results/a.txt:./out`) lands as ./out/a.txt.

The tree was written by hostile code. It is walked by host/tree.py (no recursion, every
component opened relative to its parent's fd with O_NOFOLLOW, at most MAX_DEPTH levels);
the copies are made the same way under HOST_DIR, so no symlink is ever followed on either
side. Only regular files and directories are copied; hard-linked files are skipped; names
come from readdir (never '/' or '..'). Every entry counts against MAX_ENTRIES (directories
too: empty ones cost the host inodes) and the bytes against the cap. A file always arrives
as a fresh inode (written under a temporary name, then renamed over whatever was there),
so it never inherits the mode of a file it replaces, and never has setuid/setgid or execute
bits.

Entries skipped by rule (links, special files) are notes; anything that kept a file the
job left from arriving (a cap, depth, an error on either side) also makes the copy-out
incomplete: `CopyReport.error` says why, and the Result carries it with its own status.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..policy import SCRATCH, CopyOut
from ..result import Result
from . import tree

O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_ENTRIES = 10000
MAX_NOTES = 100  # skipped entries named one by one; the rest are counted
SKIP_NOTE = "not a regular file or directory"


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0
    entries: int = 0
    unnamed: int = 0  # skipped entries past MAX_NOTES
    first_problem: str | None = None
    problems: int = 0  # entries the caller should have got and did not

    def skip(self, shown: str, reason: str, *, incomplete: bool = True) -> None:
        """Note a skipped entry; `incomplete` when it is one the caller should have got."""
        if incomplete:
            self.problems += 1
            self.first_problem = self.first_problem or f"{shown}: {reason}"
        if len(self.skipped) < MAX_NOTES:
            self.skipped.append(f"{shown}: {reason}")
        else:
            self.unnamed += 1

    @property
    def error(self) -> str | None:
        """Why the copy is incomplete (the first reason, and how many more), or None."""
        if self.first_problem is None:
            return None
        more = f" (and {self.problems - 1} more, see notes)" if self.problems > 1 else ""
        return f"copy-out incomplete: {self.first_problem}{more}"

    @property
    def notes(self) -> list[str]:
        more = [f"{self.unnamed} more entries"] if self.unnamed else []
        return [f"copy-out skipped {item}" for item in (*self.skipped, *more)]


def bring_out(result: Result, scratch: Path, requests: tuple[CopyOut, ...], cap: int) -> None:
    """Copy-out into a finished run's Result: what arrived, notes, and why it is
    incomplete (kept when an earlier step, such as the micro-VM's transfer, said so)."""
    report = copy_out(scratch, requests, cap)
    result.copied_out = report.copied
    result.notes += report.notes
    result.copy_out_error = result.copy_out_error or report.error


class _Full(Exception):
    """MAX_ENTRIES reached: the whole copy-out stops."""


def copy_out(scratch: Path, requests: tuple[CopyOut, ...], cap: int) -> CopyReport:
    """Copy each request's path under `scratch` into its HOST_DIR; never raises for
    anything the tree holds or the destination refuses: it is all in the report."""
    report = CopyReport()
    try:
        for request in requests:
            relative = os.path.relpath(request.sandbox, SCRATCH)
            parts = () if relative == "." else tuple(relative.split("/"))
            try:
                _Copier(report, cap, parts).request(scratch, request.host_dir)
            except OSError as exc:  # the path itself: missing is a note, the rest a failure
                report.skip(tree.shown(parts) or ".", exc.strerror or str(exc),
                            incomplete=exc.errno != errno.ENOENT)
    except _Full:
        report.skip("the rest", f"too many entries (limit {MAX_ENTRIES})")
    return report


class _Copier:
    def __init__(self, report: CopyReport, cap: int, parts: tuple[str, ...]) -> None:
        self.report, self.cap, self.parts = report, cap, parts
        self.host_dir = ""

    def request(self, scratch: Path, host_dir: Path) -> None:
        self.host_dir = str(host_dir)
        parent = os.open(scratch, tree.O_DIR)
        try:
            for part in self.parts[:-1]:
                next_fd = tree.open_dir(part, parent)
                os.close(parent)
                parent = next_fd
            name = self.parts[-1] if self.parts else "."
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not _copyable(info):  # skipped by rule: HOST_DIR is not even created
                self._entry(parent, name, info, -1, (), ())
                return
            os.makedirs(host_dir, exist_ok=True)  # the caller's own path
            dest = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._top(parent, name, info, dest)
            finally:
                os.close(dest)
        finally:
            os.close(parent)

    def _top(self, parent: int, name: str, info: os.stat_result, dest: int) -> None:
        """A file lands in HOST_DIR under its own name; a directory's contents land in
        HOST_DIR itself (HOST_DIR is the caller's, so it is no entry of the job's)."""
        if not stat.S_ISDIR(info.st_mode):
            self._entry(parent, name, info, dest, (self.parts[-1],), ())
            return
        source = tree.open_dir(name, parent)
        walk = tree.walk(source, (dest, ()), release=_close_context, failed=self._failed)
        try:
            for entry in walk:
                dest_fd, dest_parts = entry.context
                child = self._entry(entry.dir_fd, entry.name, entry.info, dest_fd,
                                    (*dest_parts, entry.name), entry.parts, entry.too_deep)
                if child is not None:
                    entry.descend = (child, (*dest_parts, entry.name))
        finally:
            walk.close()
            os.close(source)

    def _entry(self, src_dir: int, name: str, info: os.stat_result, dest_dir: int,
               dest_parts: tuple[str, ...], parts: tuple[str, ...],
               too_deep: bool = False) -> int | None:
        """Copy one entry; for a directory, the fd of its copy (to fill), else None."""
        report = self.report
        if report.entries >= MAX_ENTRIES:
            raise _Full
        report.entries += 1
        shown = tree.shown((*self.parts, *parts)) or "."
        if too_deep:
            report.skip(shown, f"deeper than {tree.MAX_DEPTH} levels")
            return None
        try:
            if stat.S_ISDIR(info.st_mode):
                return self._dir(dest_dir, dest_parts[-1], shown)
            if not _copyable(info):
                report.skip(shown, SKIP_NOTE if not stat.S_ISREG(info.st_mode)
                            else "hard-linked file", incomplete=False)
            elif report.bytes + info.st_size > self.cap:
                report.skip(shown, f"copy-out cap of {self.cap} bytes reached")
            else:
                self._file(src_dir, name, info, dest_dir, dest_parts, shown)
        except OSError as exc:
            report.skip(shown, exc.strerror or str(exc))
        return None

    def _dir(self, dest_dir: int, name: str, shown: str) -> int | None:
        try:
            os.mkdir(name, 0o755, dir_fd=dest_dir)
        except FileExistsError:
            pass
        try:
            return os.open(name, tree.O_DIR, dir_fd=dest_dir)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self.report.skip(shown, "its destination is a symlink or not a directory")
            return None

    def _file(self, src_dir: int, name: str, info: os.stat_result, dest_dir: int,
              dest_parts: tuple[str, ...], shown: str) -> None:
        src = os.open(name, O_FILE, dir_fd=src_dir)
        try:
            opened = os.fstat(src)
            if not stat.S_ISREG(opened.st_mode) or \
                    (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                self.report.skip(shown, "changed while being copied")
                return
            self._write(src, dest_dir, dest_parts, shown)
        finally:
            os.close(src)

    def _write(self, src: int, dest_dir: int, dest_parts: tuple[str, ...], shown: str) -> None:
        """A fresh file under a temporary name, renamed over the destination once whole."""
        temporary = f".detain-{secrets.token_hex(8)}.part"
        out = os.open(temporary, O_NEW, 0o644, dir_fd=dest_dir)
        placed = False
        try:
            try:
                complete = self._copy_bytes(src, out, shown)
            finally:
                os.close(out)
            if complete:
                os.rename(temporary, dest_parts[-1], src_dir_fd=dest_dir, dst_dir_fd=dest_dir)
                placed = True
                self.report.copied.append(os.path.join(self.host_dir, *dest_parts))
        finally:
            if not placed:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=dest_dir)

    def _copy_bytes(self, src: int, out: int, shown: str) -> bool:
        remaining = self.cap - self.report.bytes
        while chunk := os.read(src, min(1 << 20, remaining + 1)):
            if len(chunk) > remaining:
                self.report.skip(shown, "grew past the copy-out cap")
                return False
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
            remaining -= len(chunk)
            self.report.bytes += len(chunk)
        return True

    def _failed(self, parts: tuple[str, ...], exc: OSError) -> None:
        self.report.skip(tree.shown((*self.parts, *parts)) or ".", exc.strerror or str(exc))


def _copyable(info: os.stat_result) -> bool:
    """A directory, or a regular file with one name: the rest is skipped by rule."""
    return stat.S_ISDIR(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink == 1)


def _close_context(context: tuple[int, tuple[str, ...]]) -> None:
    os.close(context[0])
