"""setup.py: the code pip runs at install time, before anyone looked at the package.

A `cmdclass` entry swaps one of setuptools' build or install steps for the package's own
class; its run() is then called by pip. A run() that does more than build (starts
programs, opens URLs, runs decoded code) is the classic install-time payload; one that
only compiles (build_ext) is common in honest packages and stays medium.
"""

from __future__ import annotations

import ast

from . import indicators as ind
from .context import Context
from .fold import attr_name, fold


def check(ctx: Context) -> None:
    classes = {n.name: n for n in ast.walk(ctx.tree) if isinstance(n, ast.ClassDef)}
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Call):
            _install_time_call(ctx, node)
            if attr_name(node.func) == "setup":
                for keyword in node.keywords:
                    if keyword.arg == "cmdclass":
                        _cmdclass(ctx, keyword.value, classes)


def _install_time_call(ctx: Context, node: ast.Call) -> None:
    full = ctx.resolve(node.func)
    if ind.PROCESS_CALLS.match(full):
        ctx.add("setup-process", "medium", "process", f"setup.py calls {full}(): starts a "
                "program at install time", node.lineno)
    elif any(s[0] == node.lineno for s in ctx.signals.get("sink", [])):
        ctx.add("setup-network", "high", "network", f"setup.py calls "
                f"{full or attr_name(node.func)}(): network traffic at install time",
                node.lineno)
    elif any(s[0] == node.lineno for s in ctx.signals.get("write", [])) or full in (
            "os.remove", "os.unlink", "shutil.rmtree", "os.rename", "shutil.move"):
        ctx.add("setup-file-write", "medium", "file-write", f"setup.py calls "
                f"{full or attr_name(node.func)}(): changes files at install time",
                node.lineno)


def _entries(ctx: Context, value: ast.AST) -> list[tuple[str, ast.AST]]:
    """(step, class expression) pairs of a cmdclass dict, a dict(...) call, or a name
    bound to one of those."""
    value = ctx.value_of(value)
    if isinstance(value, ast.Dict):
        pairs = zip(value.keys, value.values, strict=True)
        return [(fold(k, ctx.names_for(k)) or "", v) for k, v in pairs if k is not None]
    if isinstance(value, ast.Call) and attr_name(value.func) == "dict":
        return [(k.arg, k.value) for k in value.keywords if k.arg]
    return []


def _cmdclass(ctx: Context, value: ast.AST, classes: dict[str, ast.ClassDef]) -> None:
    for step, target in _entries(ctx, value):
        if step not in ind.INSTALL_STEPS or not isinstance(target, ast.Name):
            continue
        cls = classes.get(target.id)
        run = next((f for f in getattr(cls, "body", []) if isinstance(f, ast.FunctionDef)
                    and f.name == "run"), None)
        if run is None:
            continue
        work = _work(ctx, run)
        severity = "high" if work and step not in ("build_ext", "build_clib") else "medium"
        detail = f": it calls {', '.join(work[:3])}" if work else ""
        ctx.add("cmdclass-override", severity, "code", f"setup.py replaces the {step!r} step "
                f"with its own {cls.name}.run(), which pip runs at install time{detail}",
                run.lineno)


def _work(ctx: Context, run: ast.FunctionDef) -> list[str]:
    """What run() calls beyond building: programs, network, files, code execution."""
    found = []
    for node in ast.walk(run):
        if isinstance(node, ast.Call):
            full, name = ctx.resolve(node.func), attr_name(node.func)
            if ((full.startswith(ind.INSTALL_WORK) and not full.startswith("os.path."))
                    or name in ind.INSTALL_WORK_NAMES):
                found.append(full or name)
    return list(dict.fromkeys(found))
