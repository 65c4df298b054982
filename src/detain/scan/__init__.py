"""Static pre-scan: look at the job's files before anything runs; nothing executes.

`scan(path)` walks a file or a directory (symlinks are not followed, sizes and counts are
capped: the files may be hostile too), runs Bandit over the Python files and detain's own
checks (scan/checks.py, and the malware triage of scan/malware.py) over everything, and
returns one JSON-ready dict.
"""

from __future__ import annotations

import ast
import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import DetainError
from ..host import tree
from . import checks, malware

MAX_FILES = 5000
MAX_READ = 2 << 20
MAX_NOTES = 20  # unreadable dirs named one by one
SKIP_DIRS = {".git", "__pycache__", ".hg", ".svn", ".tox", ".nox", "node_modules"}
UNSHIPPED_DIRS = {"tests", "test", "testing", "docs", "doc", "examples", "example",
                  "benchmarks", "bench"}
SEVERITY_ORDER = {"high": 3, "medium": 2, "low": 1, "info": 0, "undefined": 0}


def _walk(root: Path) -> tuple[list[Path], list[str]]:
    """The regular files to scan, and what was left out: the tree may be hostile (a chain
    deeper than Python's recursion, millions of entries), so host/tree.py walks it."""
    if root.is_file():
        return [root], []
    files: list[Path] = []
    skipped, too_deep, unreadable = 0, 0, []
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walk = tree.walk(top, failed=lambda parts, exc: unreadable.append(
        f"{tree.shown(parts)}: {exc.strerror or exc}"))
    try:
        for entry in walk:
            if entry.is_dir:
                too_deep += entry.too_deep
                entry.descend = True if entry.name not in SKIP_DIRS else None
            elif stat.S_ISREG(entry.info.st_mode):
                if len(files) >= MAX_FILES:
                    skipped += 1
                else:
                    files.append(Path(root, *entry.parts))
    finally:
        walk.close()
        os.close(top)
    files.sort()
    notes = unreadable[:MAX_NOTES]
    if skipped:
        notes.append(f"{skipped} file(s) past the {MAX_FILES}-file cap were not scanned")
    if too_deep:
        notes.append(f"{too_deep} dir(s) deeper than {tree.MAX_DEPTH} levels were not scanned")
    return files, notes


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(MAX_READ)


def scan(path: str | os.PathLike, *, use_bandit: bool = True,
         display_name: str | None = None) -> dict[str, Any]:
    """Findings for everything under `path`; file names are relative to it."""
    target = Path(path)
    if not target.exists():
        raise DetainError(f"scan: {path} does not exist")
    started = time.monotonic()
    root = target.parent if target.is_file() else target
    files, walk_notes = _walk(target)
    findings: list[dict[str, Any]] = []
    errors: list[str] = []
    python_files = []
    for file in files:
        rel = display_name or file.relative_to(root).as_posix()
        try:
            data = _read(file)
        except OSError as exc:
            errors.append(f"{rel}: {exc.strerror}")
            continue
        findings += checks.check_binary(file, rel, data)
        findings += checks.check_placement(rel)
        if file.suffix == ".pth":
            findings += checks.check_pth(data.decode("utf-8", "replace"), rel)
        # Python by any name: .pyw, or a `#!…python` script without a suffix (pip installs
        # a wheel's scripts and runs them as such; a build may run any)
        script = data.startswith(b"#!") and b"python" in data[:128]
        if file.suffix in (".py", ".pyw") or script or (
                target.is_file() and b"\0" not in data[:1024]):
            if len(data) >= MAX_READ:  # Bandit would read all of it: a bomb for the host
                findings.append(checks.finding(
                    "oversized-source", "medium", "other", "Python source of 2 MiB or more: "
                    "too large for the static scan, so nothing in it was checked", rel))
                continue
            python_files.append(file)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tree = ast.parse(data, filename=rel)
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                errors.append(f"{rel}: not parseable as Python ({exc.__class__.__name__})")
                continue
            findings += checks.check_python(tree, rel, file.name == "setup.py")
            findings += malware.check_python(tree, rel, file.name == "setup.py")
    if use_bandit:
        found, bandit_errors = _bandit(python_files, root)
        if display_name:
            for item in found:
                item["file"] = display_name
        findings += found
        errors += bandit_errors
    errors += walk_notes
    for item in findings:
        _demote_unshipped(item)
    findings.sort(key=lambda f: (-SEVERITY_ORDER.get(f["severity"], 0), f["file"], f["line"]))
    for number, item in enumerate(findings, 1):
        item["ref"] = f"S{number}"
    return {"ran": True, "root": str(target.resolve()), "files": len(files),
            "tools": ["detain", "bandit"] if use_bandit else ["detain"],
            "seconds": round(time.monotonic() - started, 3), "findings": findings,
            "errors": errors}


def _demote_unshipped(item: dict[str, Any]) -> None:
    """Tests, docs and examples of an sdist are neither installed nor imported: a high
    finding there is shown as medium, saying why (setup.py running them is found in
    setup.py itself)."""
    parts = [p.lower() for p in Path(item["file"]).parts]
    name = parts[-1] if parts else ""
    if item["severity"] == "high" and (set(parts[:-1]) & UNSHIPPED_DIRS or name == "conftest.py"
                                       or name.startswith("test_") or name.endswith("_test.py")):
        item["severity"] = "medium"
        item["message"] += " (in test or example code, which is not installed)"


def _bandit(files: list[Path], root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from .bandit_pass import run_bandit

    try:
        return run_bandit(files, root)
    except ImportError:
        return [], ["bandit is not installed: only detain's own checks ran "
                    "(pip install 'bandit>=1.7')"]
