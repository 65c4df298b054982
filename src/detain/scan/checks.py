"""detain's own static checks, for what the seeds warn about and SAST tools miss.

* native binaries shipped with the code (ELF, PE, Mach-O, by magic bytes or suffix): they
  run outside anything a Python-level review sees;
* `.pth` files: the interpreter executes their `import` lines at start-up (without -S);
* `setup.py` importing network or process modules (what it calls is scan/install_hooks.py);
* long base64/hex literals: possibly hidden code or data.

The malware triage rules live in scan/malware.py.

Only bytes are read and Python is only parsed (ast); nothing is imported or executed.
"""

from __future__ import annotations

import ast
import base64
import binascii
import re
import zipfile
from pathlib import Path
from typing import Any

MAGIC = {b"\x7fELF": "ELF", b"MZ": "PE (Windows)", b"\xcf\xfa\xed\xfe": "Mach-O",
         b"\xce\xfa\xed\xfe": "Mach-O", b"\xfe\xed\xfa\xce": "Mach-O (big-endian)",
         b"\xfe\xed\xfa\xcf": "Mach-O (big-endian)", b"\xca\xfe\xba\xbe": "Mach-O (universal)",
         b"\xca\xfe\xba\xbf": "Mach-O (universal, 64-bit)"}
NATIVE_SUFFIXES = (".so", ".dll", ".exe", ".dylib", ".pyd")
BLOB = re.compile(r"^(?:[A-Za-z0-9+/]{120,}={0,2}|(?:[0-9a-fA-F]{2}){80,})$")
SETUP_MODULES = {
    "network": {"socket", "urllib", "urllib.request", "http.client", "requests", "httpx",
                "urllib3", "ftplib", "smtplib"},
    "process": {"subprocess", "os.system", "os.popen", "os.exec", "os.spawn", "pty"},
}

def finding(rule: str, severity: str, category: str, message: str, file: str,
            line: int = 1) -> dict[str, Any]:
    return {"id": f"detain/{rule}", "tool": "detain", "rule": rule, "name": rule,
            "severity": severity, "confidence": "high", "category": category,
            "message": message, "file": file, "line": max(1, line), "cwe": None}


def executable_kind(data: bytes) -> str | None:
    """The executable format `data` holds, raw or as base64/hex text (its first bytes are
    enough), or None. A bare `MZ` is too common to count unless the blob is big."""
    for head, how in ((data[:8], ""), (_decode_head(data), ", base64/hex-encoded")):
        for magic, name in MAGIC.items():
            if head.startswith(magic) and (magic != b"MZ" or len(data) >= 64):
                return name + how
    return None


def _decode_head(data: bytes) -> bytes:
    if len(data) < 64:
        return b""
    text = re.sub(rb"\s", b"", data[:200])[:64]
    try:
        if re.fullmatch(rb"(?:[0-9a-fA-F]{2})+", text):
            return binascii.unhexlify(text)
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return b""


# Programs a wheel's scripts (NAME.data/scripts/, installed into the environment's bin dir)
# must not be called: installing the package would replace them for everything run later.
SHADOWED = re.compile(r"^(python[0-9.]*|pip[0-9.]*|sh|bash|dash|zsh|env|sudo|su|doas|ls|cat|"
                      r"cp|mv|rm|ps|id|whoami|git|curl|wget|nc|ncat|ssh|scp|sftp|rsync|"
                      r"ssh-add|ssh-agent|gpg2?|openssl|passwd|login|systemctl|crontab|docker|"
                      r"podman|kubectl|terraform|vault|npm|node|gcc|cc|make)$")
STARTUP_FILES = ("sitecustomize.py", "usercustomize.py")
# What developers run from an environment's bin: a script of that name is a shadow unless
# its distribution declares it as a console script (pytest's own `pytest`)
DEV_TOOLS = re.compile(r"^(python[0-9.]*|pip[0-9.]*|twine|poetry|pytest|py\.test|tox|nox|uv|uvx|"
                       r"black|ruff|flake8|mypy|pylint|isort|ipython[0-9]*|jupyter[\w-]*|"
                       r"pre-commit|virtualenv|pipx|hatch|pdm|conda|mamba|tar|find|grep|less|"
                       r"more|vi|vim|nano|awk|sed|base64|xargs|sort|head|tail|tee|chmod|"
                       r"chown|ln|mkdir|touch|kill|sleep|date|hostname|uname|which)$")
STARTUP_MODULES = ("sitecustomize", "usercustomize")
MAX_LISTED = 2000  # entries of an installed dir looked at
MAX_RECORD = 4 << 20  # characters of one RECORD read


def is_wheel_script(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) >= 3 and parts[-3].endswith(".data") and parts[-2] == "scripts"


def check_placement(rel: str) -> list[dict[str, Any]]:
    """What a file does by where it is installed, whatever it holds: a script that takes
    an interpreter's or a tool's name, a sitecustomize/usercustomize at the top of what is
    installed (Python runs it at every start)."""
    parts = rel.split("/")
    found = []
    if is_wheel_script(rel) and SHADOWED.match(parts[-1]):
        found.append(finding("shadows-program", "high", "persistence",
                             f"installs a script named {parts[-1]!r} into the environment's "
                             "bin dir: it replaces that program for everything run there "
                             "later", rel))
    # a wheel's root, its .data/purelib, an sdist's root (NAME-VERSION/) or src/ dir
    top = len(parts) == 1 or parts[-2] in ("src", "purelib", "platlib") or (
        len(parts) == 2 and "-" in parts[0])
    if parts[-1] in STARTUP_FILES and top:
        found.append(finding("startup-hook", "high", "persistence",
                             f"ships {parts[-1]} where it is installed at the top of "
                             "site-packages: Python runs it at every interpreter start", rel))
    return found


def check_installed(site: Path) -> list[dict[str, Any]]:
    """What an install put where Python or a shell runs it without being asked, from any
    distribution (a dependency's too, which the pre-scan of the package never saw): a
    sitecustomize/usercustomize at the top of site-packages, a script in its bin dir named
    like an interpreter or a tool. Each named with the distribution whose RECORD lists it."""
    owners = _record_owners(site)
    found = []
    for rel, through in startup_files(site):
        owner = owners.get(rel, "no distribution's RECORD")
        how = f", on sys.path through {through}" if through else ""
        what = (f"the install put {rel} where Python imports it at every interpreter start "
                f"(from {owner}{how})") if " -> " not in rel else (
            f"{through} puts a dir outside what was installed on sys.path ({rel}), where "
            "a sitecustomize Python imports at every start can be put later")
        found.append(finding("startup-hook", "high", "persistence", what,
                             f"site-packages/{rel}"))
    entry_points = _console_scripts(site)
    for script in (n.name for n in _listing(site / "bin") if SHADOWED.match(n.name) or (
            DEV_TOOLS.match(n.name) and n.name not in entry_points)):
        rel = f"bin/{script}"
        owner = owners.get(rel, "no distribution's RECORD")
        found.append(finding("shadows-program", "high", "persistence",
                             f"the install put {rel} in the environment's bin dir (from "
                             f"{owner}): it runs in place of that program for everything run "
                             "there later", f"site-packages/{rel}"))
    return found


def startup_files(site: Path) -> list[tuple[str, str | None]]:
    """(sitecustomize/usercustomize path relative to `site`, the .pth that puts its dir on
    sys.path or None): at the top, or in any dir a .pth file's path line adds (site imports
    the first sitecustomize on sys.path, wherever it is)."""
    dirs: list[tuple[Path, str | None]] = [(site, None)]
    for pth in (p for p in _listing(site)
                if p.suffix == ".pth" and not p.is_symlink() and p.is_file()):
        try:
            with open(pth, encoding="utf-8", errors="replace") as handle:
                lines = handle.read(MAX_RECORD).splitlines()
        except OSError:
            continue
        for line in lines[:MAX_LISTED]:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                dirs.append((site / line, pth.name))
    found = []
    root = site.resolve()
    for directory, through in dirs:
        try:
            place = directory.resolve()
        except OSError:
            continue
        if not place.is_relative_to(root):
            if through:  # outside what was installed: not to be looked into on the host
                found.append((f"{through} -> {directory.name}", through))
            continue
        if place.is_file():  # a zip on sys.path: zipimport reads modules from it
            try:
                with zipfile.ZipFile(place) as archive:
                    names = archive.namelist()[:MAX_LISTED]
            except (OSError, zipfile.BadZipFile):
                names = []
            found += [(f"{place.relative_to(root).as_posix()}/{n}", through)
                      for n in names if _startup_name(n)]
            continue
        found += [(entry.relative_to(root).as_posix(), through)
                  for entry in _listing(place) if _startup_name(entry.name)]
    return sorted(set(found), key=lambda item: item[0])


def _startup_name(name: str) -> bool:
    """Whether `name` is importable as sitecustomize/usercustomize: a .py, a sourceless
    .pyc, an extension module, or a package dir (`sitecustomize/`)."""
    stem, _, suffix = name.rstrip("/").partition(".")
    return stem in STARTUP_MODULES and (
        not suffix or suffix in ("py", "pyc") or suffix.endswith(("so", "pyd")))


def _console_scripts(site: Path) -> set[str]:
    """The console_scripts every installed distribution declares (pip writes their
    launchers into bin: pytest's `pytest` is pytest's own, not a shadow)."""
    names: set[str] = set()
    for dist_info in (d for d in _listing(site) if d.name.endswith(".dist-info")):
        entry_points = dist_info / "entry_points.txt"
        if entry_points.is_symlink() or not entry_points.is_file():
            continue
        try:
            with open(entry_points, encoding="utf-8", errors="replace") as handle:
                text = handle.read(MAX_RECORD)
        except OSError:
            continue
        section = ""
        for line in text.splitlines()[:MAX_LISTED]:
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[console_scripts]" and "=" in line:
                names.add(line.split("=", 1)[0].strip())
    return names


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())[:MAX_LISTED]
    except OSError:
        return []


def _record_owners(site: Path) -> dict[str, str]:
    """Installed file -> its distribution's dir name, from every dist-info's RECORD
    (capped: the RECORDs were written where the package's code ran)."""
    owners: dict[str, str] = {}
    for dist_info in (d for d in _listing(site) if d.name.endswith(".dist-info")):
        record = dist_info / "RECORD"
        if record.is_symlink() or not record.is_file():
            continue  # the tree is the package's: no link out of it, no FIFO to block on
        try:
            with open(record, encoding="utf-8", errors="replace") as handle:
                rows = handle.read(MAX_RECORD).splitlines()
        except OSError:
            continue
        for row in rows:
            owners.setdefault(row.split(",", 1)[0], dist_info.name[:-len(".dist-info")])
    return owners


def check_binary(path: Path, rel: str, data: bytes) -> list[dict[str, Any]]:
    """Every executable by its magic (raw, or base64/hex text), and native suffixes.

    One named for what it is (.so, .pyd, .dll, .exe, .dylib: an extension module, a
    launcher) is medium: review where it came from. One named as something else
    (`libfast.dat`, `logo.png`) or with no suffix (a program to run) is high: an
    executable that does not say it is one is hiding."""
    kind = executable_kind(data)
    honest = path.suffix.lower() in NATIVE_SUFFIXES
    if kind is None and honest:
        kind = f"{path.suffix} file"
    if kind is None:
        return []
    if honest:
        return [finding("native-binary", "medium", "native", f"native binary shipped with "
                        f"the code ({kind}): it runs outside any Python-level review", rel)]
    return [finding("native-binary", "high", "native", f"executable ({kind}) shipped under "
                    f"a name that does not say so ({path.name}): a native payload", rel)]


def check_pth(text: str, rel: str) -> list[dict[str, Any]]:
    lines = [n for n, line in enumerate(text.splitlines(), 1)
             if line.startswith(("import ", "import\t"))]
    if lines:
        return [finding("pth-exec", "high", "code", ".pth file with an import line: the "
                        "interpreter runs it at every start-up (unless -S)", rel, lines[0])]
    return [finding("pth-file", "medium", "import", ".pth file: extends sys.path of every "
                    "interpreter that loads this site dir", rel)]


def check_python(tree: ast.AST, rel: str, is_setup: bool) -> list[dict[str, Any]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            value = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            if len(value) >= 120 and BLOB.match(value.strip()):
                found.append(finding("encoded-blob", "medium", "code", "long base64/hex "
                                     f"literal ({len(value)} characters): possibly hidden "
                                     "code or data", rel, node.lineno))
    if is_setup:
        found += _setup_imports(tree, rel)
    return found


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
