"""Fold the string a Python expression spells, without running it.

Malware hides names and paths from plain text search: `"sys" + "tem"`, `"metsys"[::-1]`,
`base64.b64decode("c3lzdGVt").decode()`, `"".join(["~/.a", "ws/cred", "entials"])`,
`os.path.join(home, ".ssh", "id_rsa")`. `fold(node)` evaluates only these pure, literal-only
forms (with size caps: the source is hostile) and returns the text, or None. Parts it
cannot know (a variable in a path join, an f-string field) become WILD so a path still
matches by its known pieces.
"""

from __future__ import annotations

import ast
import base64
import binascii
import codecs
import re
import zlib
from collections.abc import Mapping

MAX_TEXT = 4096
WILD = "\x00"  # stands for a part known only at run time
PATH_JOINS = {"join", "joinpath", "Path", "PurePath", "PosixPath", "WindowsPath", "expanduser"}
DECODE_CALLS = {"b64decode", "standard_b64decode", "urlsafe_b64decode", "b32decode",
                "b16decode", "b85decode", "a85decode", "decodebytes", "unhexlify",
                "a2b_hex", "a2b_base64", "fromhex", "decompress"}


def attr_name(node: ast.AST) -> str:
    """The called name: `f` for `f(...)` and `a.b.f(...)`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def dotted(node: ast.AST) -> str:
    """`a.b.c` for an attribute chain of names, "" for anything else."""
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return node.id if isinstance(node, ast.Name) else ""


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value[:MAX_TEXT] if isinstance(value, str) else None


def fold(node: ast.AST, names: Mapping[str, str] | None = None, *, wild: bool = False,
         depth: int = 0) -> str | None:
    """The text `node` evaluates to when only literals feed it; `names` holds what simple
    variables were assigned (their folded text). With `wild`, unknown parts of
    concatenations and path joins become WILD instead of making the whole unknown."""
    if depth > 40:
        return None
    again = lambda n: fold(n, names, wild=wild, depth=depth + 1)  # noqa: E731
    if isinstance(node, ast.Constant):
        return _text(node.value)
    if isinstance(node, ast.Name) and names and node.id in names:
        known = names[node.id]
        return known if wild or WILD not in known else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Div)):
        left, right = again(node.left), again(node.right)
        if left is None or right is None:
            if not wild:
                return None
            left, right = left or WILD, right or WILD
        joiner = "/" if isinstance(node.op, ast.Div) else ""
        return (left + joiner + right)[:MAX_TEXT]
    if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
            and isinstance(node.right, ast.Constant) and isinstance(node.right.value, int)):
        unit = again(node.left)
        return (unit * min(node.right.value, MAX_TEXT))[:MAX_TEXT] if unit else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and wild:
        template = again(node.left)  # "%s.%d.example.org" % (data, n)
        return re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdirxXfgc]", WILD, template) if template else None
    if isinstance(node, ast.JoinedStr):
        parts = [again(v) if isinstance(v, ast.Constant) else (WILD if wild else None)
                 for v in node.values]
        return None if None in parts else "".join(parts)[:MAX_TEXT]  # type: ignore[arg-type]
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        return _reverse(node, again)
    if isinstance(node, ast.Call):
        return _call(node, again, wild)
    return WILD if wild else None


def _reverse(node: ast.Subscript, again) -> str | None:
    step = node.slice.step  # type: ignore[attr-defined]
    if (isinstance(step, ast.UnaryOp) and isinstance(step.op, ast.USub)
            and isinstance(step.operand, ast.Constant) and step.operand.value == 1
            and node.slice.lower is None and node.slice.upper is None):  # type: ignore[attr-defined]
        inner = again(node.value)
        return inner[::-1] if inner is not None else None
    return None


def _call(node: ast.Call, again, wild: bool) -> str | None:
    name = attr_name(node.func)
    target = node.func.value if isinstance(node.func, ast.Attribute) else None
    if name == "join" and target is not None and node.args and isinstance(
            node.args[0], (ast.List, ast.Tuple)):
        separator = again(target)
        parts = [again(e) for e in node.args[0].elts]
        if separator is None or (None in parts and not wild):
            return None
        return separator.join(p if p is not None else WILD for p in parts)[:MAX_TEXT]
    if name == "format" and target is not None and wild:  # "{}.example.org".format(data)
        template = again(target)
        return re.sub(r"\{[^{}]*\}", WILD, template) if template else None
    if name in PATH_JOINS:
        parts = [again(a) for a in node.args]
        if not parts or (None in parts and not wild):
            return None if not wild else WILD
        return "/".join(p if p is not None else WILD for p in parts)[:MAX_TEXT]
    if name == "chr" and node.args and isinstance(node.args[0], ast.Constant):
        code = node.args[0].value
        return chr(code) if isinstance(code, int) and 0 <= code < 0x110000 else None
    if name in ("decode", "encode", "lower", "upper", "strip") and target is not None:
        inner = again(target)
        if inner is None:
            return None
        if name == "decode" and node.args and again(node.args[0]) in ("rot13", "rot_13"):
            return codecs.decode(inner, "rot13")
        return getattr(inner, name)() if name in ("lower", "upper", "strip") else inner
    if name in DECODE_CALLS and node.args:
        return _decoded(name, again(node.args[0]))
    if name == "decode" and len(node.args) >= 2:  # codecs.decode(text, "rot13")
        text, codec = again(node.args[0]), again(node.args[1])
        if text is not None and codec in ("rot13", "rot_13"):
            return codecs.decode(text, "rot13")
    return WILD if wild else None


def _decoded(name: str, text: str | None) -> str | None:
    """A literal decoded as the call would, or None (bad input, or bigger than the cap)."""
    if text is None:
        return None
    data = text.encode("latin-1", "replace")
    try:
        if name in ("unhexlify", "a2b_hex", "fromhex", "b16decode"):
            out = bytes.fromhex(text) if name == "fromhex" else binascii.unhexlify(
                data.replace(b" ", b""))
        elif name == "b32decode":
            out = base64.b32decode(data)
        elif name in ("b85decode", "a85decode"):
            out = getattr(base64, name)(data)
        elif name == "decompress":
            out = zlib.decompressobj().decompress(data, MAX_TEXT)
        elif name == "urlsafe_b64decode":
            out = base64.urlsafe_b64decode(data)
        else:
            out = base64.b64decode(data)
    except (ValueError, binascii.Error, zlib.error):
        return None
    return out[:MAX_TEXT].decode("latin-1")
