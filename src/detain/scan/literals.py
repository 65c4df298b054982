"""Rules on the text a file spells: credential and persistence paths, URLs, IP addresses,
drop-point endpoints and executables embedded in literals.

Each string literal and each expression that folds to text (`"~/.a" + "ws/credentials"`,
`Path.home() / ".ssh" / "id_rsa"`) is checked once; docstrings are prose and skipped.
"""

from __future__ import annotations

import ast
import ipaddress
import re

from . import indicators as ind
from .checks import executable_kind
from .context import Context
from .fold import WILD, fold

LAN = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                         "100.64.0.0/10", "fc00::/7")]
PATHLIKE_MAX = 260  # longer, or with a newline: prose or a template, not a path
MIN_EMBEDDED = 32  # a magic number alone is a format check (b"\x7fELF"), not a payload
FOLDABLE = (ast.BinOp, ast.JoinedStr, ast.Call, ast.Subscript)


def check(ctx: Context) -> None:
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            if id(node) in ctx.docstrings:
                continue
            data = node.value if isinstance(node.value, bytes) else node.value.encode(
                "latin-1", "replace")
            embedded_executable(ctx, data, node.lineno)
            text = node.value if isinstance(node.value, str) else data.decode("latin-1")
        elif isinstance(node, FOLDABLE) and not isinstance(ctx.parents.get(node), FOLDABLE):
            text = fold(node, ctx.names_for(node), wild=True)
            if not text or not text.strip(WILD):
                continue
            embedded_executable(ctx, text.encode("latin-1", "replace"), node.lineno)
        else:
            continue
        check_text(ctx, text, node)


def check_text(ctx: Context, text: str, node: ast.AST) -> None:
    path, line = text.replace("\\", "/").lower(), node.lineno
    pathlike = "\n" not in path and len(path) <= PATHLIKE_MAX
    bare = "/" not in path.strip(WILD)  # a file name alone: a glob table, a lexer's list
    shown = text.replace(WILD, "…")[:80]
    if pathlike and path.startswith("~"):
        ctx.signal("home", node, shown)
    hit = ind.first_match(ind.CREDENTIALS, path)
    if hit:
        found = ("credential-path", "file-read",
                 f"reads {hit[1]} ({shown}): a credential-theft target")
        _path_finding(ctx, node, found, hit[2] if pathlike else "medium", bare)
        if hit[2] == "high" and pathlike:
            ctx.signal("collect", node, hit[1])
    hit = ind.first_match(ind.PERSISTENCE, path)
    if hit:
        found = ("persistence-path", "file-write",
                 f"names {hit[1]} ({shown}): code written there runs again later "
                 "(persistence)")
        _path_finding(ctx, node, found, "high" if pathlike else "medium", bare)
    if pathlike and ind.PTH.search(path):
        ctx.signal("pth", node, shown)
    if ind.IMPORT_LINE.search(text):
        ctx.signal("import-line", node, shown)
    hit = ind.first_match(ind.ENDPOINTS, path)
    if hit:
        fixed = len(hit) < 3 or re.search(hit[2], path)
        ctx.add("exfil-endpoint", "high" if fixed else "medium", "network",
                f"sends to or fetches from {hit[1]} ({shown})" + (
                    ": a common drop point for stolen data or payloads" if fixed else ""),
                line)
    for match in ind.URL.finditer(text):
        _address(ctx, match.group(1), node, url=match.group(0))
    if pathlike and (ind.IPV4.match(text) or text.count(":") >= 2):
        _address(ctx, text, node, url=None)


def _path_finding(ctx: Context, node: ast.AST, found: tuple[str, str, str], severity: str,
                  bare: bool) -> None:
    """A bare file name is high only when the file also works in the home directory:
    settled at the end, when that is known."""
    if severity == "high" and bare:
        ctx.signal("bare", node, found)
    else:
        ctx.add(found[0], severity, found[1], found[2], node.lineno)


def _address(ctx: Context, host: str, node: ast.AST, url: str | None) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if url:
            ctx.signal("url", node, url[:80])
        return
    line = node.lineno
    if _local(address):
        ctx.add("ip-literal", "low", "network", f"hard-coded local address {host}", line)
    elif url:
        ctx.add("ip-literal", "high", "network", f"sends to or fetches from a hard-coded IP "
                f"address ({url[:80]}): no domain name, so nothing to look up or block", line)
    else:
        ctx.signal("ip", node, host)


def _local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """This machine or its LAN. Documentation ranges (192.0.2.0/24 ...) count as remote:
    honest code has no reason to reach them."""
    return (address.is_loopback or address.is_unspecified or address.is_link_local
            or address.is_multicast or any(address in net for net in LAN))


def embedded_executable(ctx: Context, data: bytes, line: int) -> None:
    kind = executable_kind(data) if len(data) >= MIN_EMBEDDED else None
    if kind:
        ctx.add("embedded-executable", "high", "native", f"embeds a {kind} executable in a "
                "literal: a native payload to drop and run", line)
