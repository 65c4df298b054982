"""The one sanitizer for text that came out of a job and is about to reach a terminal.

A terminal obeys bytes, not meaning: ESC/CSI/OSC sequences clear the screen, move the
cursor, set the window title or write a hyperlink; a lone CR or a line separator lets a
later string overwrite or forge one of detain's own lines; bidi overrides reorder what is
shown. Every job-derived string (file names, argv, event summaries, test ids, error text
quoting the job) goes through `visible` in the renderer that prints it, so a job can put
any bytes it likes into a name and the person still reads exactly those bytes, escaped,
and nothing else. Printable text (any script) is left as it is; a tab is escaped too.

The job's own stdout and stderr are not detain's lines: they pass through byte for byte,
as any program's output would (rewriting them would corrupt binary output, and a person
who runs a program in a terminal already lets it write there). Use `--json` or pipe the
output when even that is unwanted.
"""

from __future__ import annotations

import sys
import unicodedata

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any, TextIO

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# Control (C0, DEL, C1 with 0x9b the 8-bit CSI), format (bidi marks, embeddings,
# overrides, isolates, zero-width characters, the byte-order mark), line and paragraph
# separators, surrogates, private-use and unassigned code points: all may steer a terminal.
_UNSAFE = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: Any) -> str:
    """`text` as a string a terminal shows literally: unsafe characters become escapes
    (`\\x1b`, `\\u202e`, `\\n`), and a backslash is doubled so no escape is ambiguous."""
    text = "" if text is None else str(text)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(c) if c in _NAMED or unicodedata.category(c) in _UNSAFE else c
                   for c in text)


def visible_tree(value: Any) -> Any:
    """A copy of a JSON-like value with every string (keys too) made `visible`; iterative,
    as a job's event details may nest deeper than Python's recursion limit."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, str):
            parent[key] = visible(item)
        elif isinstance(item, dict):
            parent[key] = copy = {}
            for name, child in item.items():
                name = visible(name) if isinstance(name, str) else name
                copy[name] = None
                stack.append((child, copy, name))
        elif isinstance(item, (list, tuple)):
            parent[key] = copy = [None] * len(item)
            stack.extend((child, copy, index) for index, child in enumerate(item))
        else:
            parent[key] = item
    return root[0]


def say(line: str, file: TextIO | None = None) -> None:
    """Print one of detain's own lines (`detain: ...`, to stderr): the whole line is made
    `visible`, so whatever part of it quotes the job cannot end it, start a forged one or
    drive the terminal."""
    print(f"detain: {visible(line)}", file=file or sys.stderr)
