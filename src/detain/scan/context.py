"""What the malware pass knows about one parsed file, shared by its rule modules.

Import aliases (so `from urllib.request import urlopen as u; u(...)` is
`urllib.request.urlopen`), the folded text of simple assignments, parent links, the
findings so far (one per rule and line) and the signals rules combine at the end
("this file reads a credential file" + "this file sends data").
"""

from __future__ import annotations

import ast
from collections import ChainMap, defaultdict
from typing import Any

from .checks import finding
from .fold import WILD, attr_name, dotted, fold

Signal = tuple[int, str, int]  # (line, what, scope)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class Context:
    def __init__(self, tree: ast.AST, rel: str, is_setup: bool) -> None:
        self.tree, self.rel, self.is_setup = tree, rel, is_setup
        self.aliases: dict[str, str] = {}
        # per scope (id of its function node, or of the module): variable -> folded text
        # of its (last) value, and -> its assigned expression
        self.names: dict[int, dict[str, str]] = defaultdict(dict)
        self.values: dict[int, dict[str, ast.AST]] = defaultdict(dict)
        self.parents: dict[ast.AST, ast.AST] = {}
        self.signals: dict[str, list[Signal]] = defaultdict(list)
        self._found: dict[tuple[str, int], dict[str, Any]] = {}
        self.docstrings: set[int] = set()
        self._prepare()

    def _prepare(self) -> None:
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                self.docstrings.add(id(node.value))  # docstrings and bare strings: prose
        assigns = [n for n in ast.walk(self.tree) if isinstance(n, (ast.Assign, ast.AnnAssign))
                   and n.value is not None]
        for node in sorted(assigns, key=lambda n: (n.lineno, n.col_offset)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            scope = self.scope(node)
            for target in targets:
                if isinstance(target, ast.Name):
                    self.values[scope][target.id] = node.value
                    text = fold(node.value, self.names_for(node), wild=True)
                    if text and text.strip(WILD):
                        self.names[scope][target.id] = text
                    else:
                        self.names[scope].pop(target.id, None)

    def scope(self, node: ast.AST) -> int:
        """The innermost function holding `node` (its id), or the module's."""
        return next((id(a) for a in self.ancestors(node) if isinstance(a, SCOPES)),
                    id(self.tree))

    def names_for(self, node: ast.AST) -> ChainMap:
        """The variables `node` sees: its function's, then the module's."""
        return ChainMap(self.names[self.scope(node)], self.names[id(self.tree)])

    def value_of(self, node: ast.AST) -> ast.AST:
        """The expression a plain variable was assigned, or the node itself."""
        if isinstance(node, ast.Name):
            for scope in (self.scope(node), id(self.tree)):
                if node.id in self.values[scope]:
                    return self.values[scope][node.id]
        return node

    def resolve(self, node: ast.AST) -> str:
        """The dotted name a call target or attribute stands for, aliases resolved;
        `__import__("os").system` and `getattr(os, "sys" + "tem")` resolve to os.system."""
        if isinstance(node, ast.Call):
            name = attr_name(node.func)
            if name in ("__import__", "import_module") and node.args:
                return fold(node.args[0], self.names_for(node)) or ""
            if name == "getattr" and len(node.args) >= 2:
                owner = self.resolve(node.args[0])
                attr = fold(node.args[1], self.names_for(node))
                return f"{owner}.{attr}" if owner and attr else ""
            return ""
        if isinstance(node, ast.Attribute):
            owner = self.resolve(node.value)
            return f"{owner}.{node.attr}" if owner else ""
        text = dotted(node)
        if not text:
            return ""
        head, _, rest = text.partition(".")
        head = self.aliases.get(head, head)
        return f"{head}.{rest}" if rest else head

    def add(self, rule: str, severity: str, category: str, message: str, line: int) -> None:
        """One finding per rule and line; a stronger one replaces a weaker one."""
        key = (rule, line)
        old = self._found.get(key)
        if old is None or _rank(severity) > _rank(old["severity"]):
            self._found[key] = finding(rule, severity, category, message, self.rel, line)

    def signal(self, kind: str, node: ast.AST, what: str) -> None:
        self.signals[kind].append((node.lineno, what, self.scope(node)))

    def ancestors(self, node: ast.AST):
        while node in self.parents:
            node = self.parents[node]
            yield node

    def findings(self) -> list[dict[str, Any]]:
        return list(self._found.values())


def _rank(severity: str) -> int:
    return {"high": 3, "medium": 2, "low": 1}.get(severity, 0)
