"""Does a static finding's file:line foresee a run-time event's file:line?

Per line, not per file: a file with one `subprocess` finding must not "predict" every
process the file starts. A finding predicts an event in the same file on the same line,
within the same statement (a call spread over lines reports its first line, the event the
line running), or within the same function (the finding on the call, the event raised a few
lines further down in the same body). Files match by their trailing path components: the
scan names `pkg-1.0/setup.py` where pip's build ran `setup.py`.

The sources are parsed with `ast` on the host: they are hostile data, so size is capped and
any parse failure leaves only exact-line matching.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE_CAP = 2 << 20


def same_file(static: str | None, runtime: str | None) -> bool:
    if not static or not runtime:
        return False
    return static == runtime or static.endswith("/" + runtime) or runtime.endswith(
        "/" + static)


class Places:
    """Statement and function extents of the scanned files, parsed once each on demand."""

    def __init__(self, root: str | None) -> None:
        base = Path(root) if root else None
        self.root = base.parent if base is not None and base.is_file() else base
        self.parsed: dict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}

    def near(self, file: str, finding_line: int | None, event_line: int | None) -> bool:
        """Whether `event_line` is the finding's line, statement or function."""
        if not isinstance(finding_line, int) or not isinstance(event_line, int):
            return False
        if finding_line == event_line:
            return True
        statements, functions = self._extents(file)
        for spans in (statements, functions):
            inner = _innermost(spans, finding_line)
            if inner is not None and inner[0] <= event_line <= inner[1]:
                return True
        return False

    def _extents(self, file: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        if file not in self.parsed:
            self.parsed[file] = _parse(self.root / file) if self.root else ([], [])
        return self.parsed[file]


def _innermost(spans: list[tuple[int, int]], line: int) -> tuple[int, int] | None:
    best = None
    for start, end in spans:
        if start <= line <= end and (best is None or end - start < best[1] - best[0]):
            best = (start, end)
    return best


def _parse(path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    try:
        with open(path, "rb") as handle:
            source = handle.read(SOURCE_CAP + 1)
        if len(source) > SOURCE_CAP:
            return [], []
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return [], []
    statements, functions = [], []
    for node in ast.walk(tree):
        end = getattr(node, "end_lineno", None)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and end:
            functions.append((node.lineno, end))
        elif isinstance(node, ast.stmt) and end and not isinstance(
                node, (ast.ClassDef, ast.If, ast.For, ast.AsyncFor, ast.While, ast.With,
                       ast.AsyncWith, ast.Try, ast.Match)):
            statements.append((node.lineno, end))
    return statements, functions
