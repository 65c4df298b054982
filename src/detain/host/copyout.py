"""Bring files out of the sandbox's scratch dir without trusting anything about them.

The tree was written by hostile code. Every component is opened relative to its parent
directory fd with O_NOFOLLOW (no symlink is ever followed, on either side), only regular
files and directories are copied, hard-linked files are skipped, modes lose setuid/setgid
and execute bits, names come from readdir (never '/' or '..'), and the total is capped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..policy import SCRATCH, CopyOut

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_ENTRIES = 10000


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


def copy_out(scratch: Path, requests: tuple[CopyOut, ...], cap: int) -> CopyReport:
    report = CopyReport()
    for request in requests:
        relative = os.path.relpath(request.sandbox, SCRATCH)
        parts = [] if relative == "." else relative.split("/")
        try:
            _copy_request(scratch, parts, request.host_dir, cap, report)
        except OSError as exc:
            report.skipped.append(f"{request.sandbox}: {exc.strerror or exc}")
    return report


def _copy_request(scratch: Path, parts: list[str], host_dir: Path, cap: int,
                  report: CopyReport) -> None:
    fd = os.open(scratch, O_DIR)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        name = parts[-1] if parts else "scratch"
        source_name = parts[-1] if parts else "."
        _copy_entry(fd, source_name, host_dir, name, cap, report, "/".join(parts))
    finally:
        os.close(fd)


def _copy_entry(parent_fd: int, name: str, dest_dir: Path, dest_name: str, cap: int,
                report: CopyReport, shown: str) -> None:
    if len(report.copied) + len(report.skipped) >= MAX_ENTRIES:
        report.skipped.append(f"{shown}: too many entries (limit {MAX_ENTRIES})")
        return
    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    dest = dest_dir / dest_name
    if stat.S_ISDIR(info.st_mode):
        fd = os.open(name, O_DIR, dir_fd=parent_fd)
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink():
                report.skipped.append(f"{shown}: destination {dest} is a symlink")
                return
            dest.mkdir(mode=0o755, exist_ok=True)
            for child in sorted(os.listdir(fd)):
                _copy_entry(fd, child, dest, child, cap, report, f"{shown}/{child}")
        finally:
            os.close(fd)
        return
    if not stat.S_ISREG(info.st_mode):
        report.skipped.append(f"{shown}: not a regular file or directory")
        return
    if info.st_nlink > 1:
        report.skipped.append(f"{shown}: hard-linked file")
        return
    if report.bytes + info.st_size > cap:
        report.skipped.append(f"{shown}: copy-out cap of {cap} bytes reached")
        return
    src = os.open(name, O_FILE, dir_fd=parent_fd)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        opened = os.fstat(src)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != \
                (info.st_dev, info.st_ino):
            report.skipped.append(f"{shown}: changed while being copied")
            return
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o644)
        try:
            remaining = cap - report.bytes
            while chunk := os.read(src, min(1 << 20, remaining + 1)):
                if len(chunk) > remaining:
                    report.skipped.append(f"{shown}: grew past the copy-out cap")
                    break
                os.write(out, chunk)
                remaining -= len(chunk)
                report.bytes += len(chunk)
        finally:
            os.close(out)
    finally:
        os.close(src)
    report.copied.append(str(dest))
