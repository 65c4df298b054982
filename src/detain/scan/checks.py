"""detain's own static checks, for what the seeds warn about and SAST tools miss.

* native binaries shipped with the code (ELF, PE, Mach-O, by magic bytes or suffix): they
  run outside anything a Python-level review sees;
* `.pth` files: the interpreter executes their `import` lines at start-up (without -S);
* `setup.py` doing network, process or file work: it runs at install time, before anyone
  looked at the package;
* obfuscation: long base64/hex literals and exec/eval of decoded data.

Only bytes are read and Python is only parsed (ast); nothing is imported or executed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

MAGIC = {b"\x7fELF": "ELF", b"MZ": "PE (Windows)", b"\xcf\xfa\xed\xfe": "Mach-O",
         b"\xce\xfa\xed\xfe": "Mach-O", b"\xca\xfe\xba\xbe": "Mach-O (universal)"}
NATIVE_SUFFIXES = (".so", ".dll", ".exe", ".dylib", ".pyd")
BLOB = re.compile(r"^(?:[A-Za-z0-9+/]{120,}={0,2}|(?:[0-9a-fA-F]{2}){80,})$")
DECODERS = {"b64decode", "b32decode", "b85decode", "a85decode", "decodebytes", "unhexlify",
            "fromhex", "decompress", "loads", "decode", "urlsafe_b64decode"}
EXECUTORS = {"exec", "eval", "compile"}
SETUP_MODULES = {
    "network": {"socket", "urllib", "urllib.request", "http.client", "requests", "httpx",
                "urllib3", "ftplib", "smtplib"},
    "process": {"subprocess", "os.system", "os.popen", "os.exec", "os.spawn", "pty"},
}
SETUP_CALLS = {
    "network": {"urlopen", "urlretrieve", "create_connection", "connect", "getaddrinfo",
                "get", "post"},
    "process": {"system", "popen", "Popen", "run", "call", "check_call", "check_output",
                "execv", "execve", "execvp", "spawnl", "spawnv"},
    "file-write": {"remove", "unlink", "rmtree", "chmod", "rename", "copyfile", "move",
                   "write_text", "write_bytes"},
}


def finding(rule: str, severity: str, category: str, message: str, file: str,
            line: int = 1) -> dict[str, Any]:
    return {"id": f"detain/{rule}", "tool": "detain", "rule": rule, "name": rule,
            "severity": severity, "confidence": "high", "category": category,
            "message": message, "file": file, "line": max(1, line), "cwe": None}


def check_binary(path: Path, rel: str, head: bytes) -> list[dict[str, Any]]:
    kind = next((name for magic, name in MAGIC.items() if head.startswith(magic)), None)
    if kind is None and path.suffix.lower() in NATIVE_SUFFIXES:
        kind = f"{path.suffix} file"
    if kind is None:
        return []
    return [finding("native-binary", "high", "native",
                    f"native binary shipped with the code ({kind}): it runs outside any "
                    "Python-level review", rel)]


def check_pth(text: str, rel: str) -> list[dict[str, Any]]:
    lines = [n for n, line in enumerate(text.splitlines(), 1)
             if line.startswith(("import ", "import\t"))]
    if lines:
        return [finding("pth-exec", "high", "code", ".pth file with an import line: the "
                        "interpreter runs it at every start-up (unless -S)", rel, lines[0])]
    return [finding("pth-file", "medium", "import", ".pth file: extends sys.path of every "
                    "interpreter that loads this site dir", rel)]


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def check_python(tree: ast.AST, rel: str, is_setup: bool) -> list[dict[str, Any]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            value = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            if len(value) >= 120 and BLOB.match(value.strip()):
                found.append(finding("encoded-blob", "medium", "code", "long base64/hex "
                                     f"literal ({len(value)} characters): possibly hidden "
                                     "code or data", rel, node.lineno))
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in EXECUTORS and node.args and any(
                isinstance(inner, ast.Call) and _name(inner.func) in DECODERS
                for inner in ast.walk(node.args[0])):
            found.append(finding("exec-decoded", "high", "code", f"{name}() of decoded "
                                 "data: obfuscated code execution", rel, node.lineno))
        if is_setup:
            found += _setup_call(node, name, rel)
    if is_setup:
        found += _setup_imports(tree, rel)
    return found


def _setup_call(node: ast.Call, name: str, rel: str) -> list[dict[str, Any]]:
    dotted = _dotted(node.func)
    for category, calls in SETUP_CALLS.items():
        if name in calls and (category != "network" or "." in dotted):
            return [finding(f"setup-{category}", "high", category, f"setup.py calls "
                            f"{dotted or name}(): {category} work at install time", rel,
                            node.lineno)]
    if name == "open" and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                              and set(a.value) & set("wax+") for a in node.args[1:2]):
        return [finding("setup-file-write", "high", "file-write", "setup.py opens a file "
                        "for writing at install time", rel, node.lineno)]
    return []


def _setup_imports(tree: ast.AST, rel: str) -> list[dict[str, Any]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        for category, modules in SETUP_MODULES.items():
            hit = next((n for n in names if n in modules or n.split(".")[0] in modules), None)
            if hit:
                found.append(finding(f"setup-imports-{category}", "medium", category,
                                     f"setup.py imports {hit}: {category} access at "
                                     "install time", rel, node.lineno))
    return found
