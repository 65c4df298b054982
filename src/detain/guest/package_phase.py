"""Inside the sandbox: one phase of `detain package` (stdlib only).

    package_phase.py install TARGET_DIR ARTIFACT [PIP_OPTIONS...]
    package_phase.py import SITE_DIR TIMEOUT [PROJECT]
    package_phase.py exercise SITE_DIR TIMEOUT [PROJECT]

install: a throw-away venv in scratch runs pip (from the interpreter's bundled wheel, as
guest/deps.py finds it) to install the artifact and its dependencies into TARGET_DIR; sdists
are built here, inside. pip and any build run as child processes, outside this process's
audit hook: a .pth file in the venv starts guest/audit.py's child hook in every Python the
venv runs (pip, the build backend, setup.py), which writes what the package's own code did
(code under pip's build dirs only; pip's and setuptools' own work is not the package's) to
a file per process; after pip, this phase relays those records into its own channel.
import: SITE_DIR is added as a site dir (so its .pth files run, as they would in a real
environment), then every top-level module and submodule is imported, each under a timeout.
exercise: after importing, every public function that takes no required argument is
called once, each under a timeout — package-analysis's idea of exercising the code.
PROJECT (the vetted package's canonical name, from the host) tells its files from its
dependencies': only its own modules are imported (a dependency runs as the package imports
it), and the audit hook is told, before any of it runs, which files are the dependencies'
(from their RECORDs), so that what requests does is reported at the package's line that
called it, `through` requests.

The outcome is printed as one `DETAIN-PHASE {json}` line on stdout: produced in the same
process as the package's code, it is in-process evidence like the audit events.
"""

import csv
import importlib
import importlib.util
import inspect
import json
import os
import re
import signal
import site
import subprocess
import sys
import warnings

MARKER = "DETAIN-PHASE "
MAX_MODULES = 500
STARTUP_MODULES = ("sitecustomize", "usercustomize")
MAX_CALLS = 500
MAX_RECORDED = 200000  # files of the dependencies' RECORDs told to the hook


class PhaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so the package's `except Exception` won't eat it."""


def _alarm(_signum, _frame):
    raise PhaseTimeout()


def limited(seconds, func, *args):
    """(ok, error text) of func(*args), given at most `seconds` seconds."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        func(*args)
        return True, None
    except PhaseTimeout:
        return False, "timed out after %s s" % seconds
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from the package too
        return False, ("%s: %s" % (type(exc).__name__, exc))[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


CHILD_BOOT = """import os, sys
def _detain_child_audit():
    if (sys.argv[0] if sys.argv else "") in %r:
        return  # detain's pip (and it installing build requirements), by its exact path
    if os.environ.get("NETRC") == %r:
        del os.environ["NETRC"]  # pip's alone: the package's code finds ~/.netrc as usual
    external = sys.modules["_frozen_importlib_external"]
    spec = external.spec_from_file_location("detain_guest_audit", %r)
    module = sys.modules["_frozen_importlib"].module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install_child(%r, %r, %r, %r)
_detain_child_audit()
"""
# pip reads ~/.netrc for index credentials: pointed elsewhere, it leaves the decoy one
# (detain package's) untouched, so a read of it is always the package's code
PIP_NETRC = os.devnull
CHILD_NAMES = ("detain_child_audit.py", "detain-child-audit.pth")  # what audit_children adds
CHILD_LOG_DIR = "audit-children"  # in the phase's scratch (working) dir
CHILD_LOG_CAP = 4 << 20  # bytes relayed from all child processes together
CHILD_FILES = 200
# The names of the decoy variables detain package planted (comma-separated; package/decoys.py
# sets it): taken out of the environment before any package code runs, and handed to the
# hook here and to every child's through its boot file, so each watches them by name.
DECOYS_VARIABLE = "DETAIN_DECOYS"


def guest_path(name):
    """Where guest/NAME.py is: next to the launcher, found through the interpreter's argv."""
    launcher = next(a for a in sys.orig_argv if a.endswith("launcher.py"))
    return os.path.join(os.path.dirname(os.path.abspath(launcher)), name + ".py")


def guest_helper(name):
    """A sibling of the launcher (guest/NAME.py), loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("detain_guest_" + name, guest_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pip_entries(wheel):
    """How detain's pip is started, as sys.argv[0] says it: the bundled wheel's `pip`, and
    pip's runner when it installs build requirements. Only these exact paths, in the
    interpreter's read-only install, go without the child hook (never `-m pip`)."""
    return [os.path.join(wheel, "pip"), os.path.join(wheel, "pip", "__pip-runner__.py")]


def audit_children(prefix, work, tmp, decoys=(), wheel=""):
    """Make every Python of the venv at `prefix` start the child audit hook; returns the
    dir its per-process logs go to. The package's code is what pip builds from: its
    unpacked sdist (pip-req-build-*, pip-install-* for dependencies) or the copied tree.
    `decoys` (the planted variables' names) are written into the boot file itself: a
    child the package starts with an environment of its own still watches them."""
    import glob

    log_dir = os.path.join(work, CHILD_LOG_DIR)
    os.makedirs(log_dir, exist_ok=True)
    roots = [os.path.join(tmp, "pip-req-build-"), os.path.join(tmp, "pip-install-"),
             os.path.join(work, "src") + os.sep]
    for site_dir in glob.glob(os.path.join(prefix, "lib", "python*", "site-packages")):
        with open(os.path.join(site_dir, CHILD_NAMES[0]), "w") as handle:
            handle.write(CHILD_BOOT % (pip_entries(wheel), PIP_NETRC, guest_path("audit"),
                                       log_dir, roots,
                                       [tmp + os.sep, os.path.join(work, "src") + os.sep],
                                       list(decoys)))
        with open(os.path.join(site_dir, CHILD_NAMES[1]), "w") as handle:
            handle.write("import detain_child_audit\n")
    return log_dir


def relay_children(log_dir):
    """Hand every child's records to this process's hook (`detain.relay`), oldest first.

    They were written where the package's code ran, so each line is decoded defensively
    and the total is capped; the hook and then the host check every field again."""
    budget = CHILD_LOG_CAP
    records = []
    for name in sorted(os.listdir(log_dir))[:CHILD_FILES]:
        try:
            with open(os.path.join(log_dir, name), "rb") as handle:
                data = handle.read(max(budget, 0))
        except OSError:
            continue
        budget -= len(data)
        records += [r for r in map(_record, data.splitlines()) if isinstance(r, dict)]
    records.sort(key=lambda r: r["mono"] if isinstance(r.get("mono"), float) else 0.0)
    for record in records:
        sys.audit("detain.relay", record)


def _record(line):
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def install(target_dir, artifact, pip_options, decoys=()):
    import venv

    work = os.getcwd()
    if os.path.isdir(artifact):  # a source tree is shown read-only; pip builds in place
        import shutil

        artifact = shutil.copytree(artifact, os.path.join(work, "src"), symlinks=True)
    prefix = os.path.join(work, "venv")
    venv.EnvBuilder(symlinks=True, with_pip=False).create(prefix)
    wheel = guest_helper("deps").pip_wheel()
    if wheel is None:
        return {"ok": False, "error": "this interpreter ships no pip wheel (ensurepip)"}
    tmp = os.path.join(work, "tmp")
    os.makedirs(tmp, exist_ok=True)
    log_dir = audit_children(prefix, work, tmp, decoys, wheel)
    argv = [os.path.join(prefix, "bin", "python"), "-I", os.path.join(wheel, "pip"),
            "install", "--isolated", "--target", target_dir, "--no-cache-dir",
            "--disable-pip-version-check", "--no-input", "--no-warn-script-location",
            "--progress-bar", "off", *pip_options, artifact]
    # The phase's own environment (PATH, proxies, and the HOME of decoy credentials and
    # the decoy variables detain package sets): setup.py must find what a developer has.
    # The venv's bin first on PATH, as in an activated venv: a build that runs `python3`
    # runs the venv's, which carries the child audit hook.
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", **os.environ,
           "TMPDIR": tmp, "NETRC": PIP_NETRC}
    env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env["PATH"]
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False)
    relay_children(log_dir)
    installed = sorted(n[:-len(".dist-info")] for n in os.listdir(target_dir)
                       if n.endswith(".dist-info")) if os.path.isdir(target_dir) else []
    return {"ok": done.returncode == 0, "pip_exit": done.returncode, "installed": installed}


def top_level(site_dir):
    """Top-level importable names: dist-info's top_level.txt, else what lies in the dir."""
    names = set()
    for entry in os.listdir(site_dir):
        path = os.path.join(site_dir, entry)
        if entry.endswith(".dist-info") and os.path.isfile(os.path.join(path, "top_level.txt")):
            with open(os.path.join(path, "top_level.txt"), encoding="utf-8") as handle:
                names.update(line.strip() for line in handle if line.strip())
        elif module_stem(entry):
            names.add(module_stem(entry))
        elif entry.isidentifier() and has_python(path):
            names.add(entry)  # a package, or a namespace package (no __init__.py)
    return sorted(n for n in names if n.isidentifier() and n not in (
        "bin", "tests", "test", *STARTUP_MODULES))  # those: what Python runs, imported first


def has_python(path, depth=3):
    """Whether a dir holds Python source at any of its first `depth` levels: a regular or
    namespace package (only a wheel's .data or a dist-info has none)."""
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    if any(e.endswith(".py") for e in entries):
        return True
    return depth > 0 and any(e.isidentifier() and has_python(os.path.join(path, e), depth - 1)
                             for e in entries[:MAX_MODULES])


def submodules(name, paths, budget):
    """Dotted names of every module under a package's `paths`, namespace subdirs (no
    __init__.py, which pkgutil skips) included, at most `budget`."""
    found, todo = [], [(name, list(paths))]
    while todo and len(found) < budget:
        prefix, dirs = todo.pop(0)
        for directory in dirs:
            try:
                entries = sorted(os.listdir(directory))
            except OSError:
                continue
            for entry in entries:
                path = os.path.join(directory, entry)
                stem = module_stem(entry)
                if stem and stem.isidentifier() and stem != "__init__":
                    found.append(prefix + "." + stem)
                elif entry.isidentifier() and os.path.isdir(path) and has_python(path):
                    found.append(prefix + "." + entry)
                    todo.append((prefix + "." + entry, [path]))
    return found[:budget]


def module_stem(entry):
    """The module name a file in a package dir is imported as (x.py, x.cpython-311-….so)."""
    if entry.endswith(".py"):
        return entry[:-3]
    if ".cpython-" in entry and entry.endswith(".so"):
        return entry.split(".", 1)[0]
    return None


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def recorded(site_dir, dist_info):
    """The files a dist-info's RECORD lists, as absolute paths (capped)."""
    paths = []
    try:
        with open(os.path.join(site_dir, dist_info, "RECORD"), encoding="utf-8",
                  errors="replace") as handle:
            for row in csv.reader(handle):
                if row and len(paths) < MAX_RECORDED:
                    paths.append(os.path.normpath(os.path.join(site_dir, row[0])))
    except (OSError, csv.Error):
        pass
    return paths


def split_site(site_dir, project):
    """(the package's own top-level names, or None when it is not found; every file its
    dependencies' RECORDs list, with the distribution's name)."""
    own, dependencies = None, {}
    for entry in sorted(os.listdir(site_dir)):
        if not entry.endswith(".dist-info"):
            continue
        files = recorded(site_dir, entry)
        name = entry[:-len(".dist-info")].rpartition("-")[0]
        if canonical(name) == project:
            own = {os.path.relpath(f, site_dir).split(os.sep)[0] for f in files}
            own = {n[:-3] if n.endswith(".py") else n.split(".", 1)[0] for n in own}
        elif len(dependencies) < MAX_RECORDED:
            dependencies.update(dict.fromkeys(files, name))
    return own, dependencies


def import_all(site_dir, seconds, own=None):
    site.addsitedir(site_dir)  # its .pth files run, whichever distribution's
    results = {}
    # what Python itself runs at every start, whoever installed it (site.main would)
    # the first on sys.path, wherever a .pth path line put it (a dir, a zip), unless it is
    # the interpreter's own
    for name in STARTUP_MODULES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None) or ""
        if origin and not origin.startswith((sys.base_prefix + os.sep, "/etc/")):
            results[name] = limited(seconds, importlib.import_module, name)
    names = top_level(site_dir)
    if own:
        names = [n for n in names if n in own] or names
    for name in names:
        results[name] = limited(seconds, importlib.import_module, name)
        module = sys.modules.get(name)
        if not results[name][0] or not hasattr(module, "__path__"):
            continue
        for sub in submodules(name, module.__path__, MAX_MODULES - len(results)):
            results[sub] = limited(seconds, importlib.import_module, sub)
    return results


def exercise(modules, seconds):
    calls = {}
    for name in modules:
        module = sys.modules.get(name)
        for attr, value in sorted(vars(module).items()) if module is not None else ():
            if attr.startswith("_") or not inspect.isfunction(value):
                continue
            if value.__module__ != name or len(calls) >= MAX_CALLS:
                continue
            try:
                params = inspect.signature(value).parameters.values()
            except (TypeError, ValueError):
                continue
            if any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                      p.KEYWORD_ONLY) for p in params):
                continue
            calls[name + "." + attr] = limited(seconds, value)
    return calls


def claim_decoys():
    """Tell this process's hook the decoy variables' names (the first claim is the only one
    it takes) and take them out of the environment, where the package's code would learn
    which variables are bait; returns them for the install phase's children."""
    names = tuple(n for n in os.environ.pop(DECOYS_VARIABLE, "").split(",") if n)
    sys.audit("detain.decoys", names)
    return names


def main():
    # This script is detain's, like the launcher: what it does itself (the venv, pip, the
    # dirs it reads) is not the package's. Claimed before any package code runs.
    sys.audit("detain.guest", __file__)  # as its code objects name it
    decoys = claim_decoys()
    # Under the strict profile (-W error) a package's DeprecationWarning would read as a
    # failed import; warnings are shown, not raised, for the package's code.
    warnings.resetwarnings()
    warnings.simplefilter("default")
    phase, first, *rest = sys.argv[1:]
    if phase == "install":
        outcome = install(first, rest[0], rest[1:], decoys)
    else:
        seconds = float(rest[0])
        own = None
        if len(rest) > 1:
            own, dependencies = split_site(first, canonical(rest[1]))
            if own:  # claimed before any of the site's code runs; only the first claim counts
                sys.audit("detain.dependencies", dependencies, first)
        imported = import_all(first, seconds, own)
        outcome = {"ok": True, "modules": {k: v[1] for k, v in imported.items()}}
        if phase == "exercise":
            ok = [k for k, v in imported.items() if v[0]]
            outcome["calls"] = {k: v[1] for k, v in exercise(ok, seconds).items()}
    sys.stdout.write("\n" + MARKER + json.dumps(outcome) + "\n")
    sys.stdout.flush()
    sys.exit(0 if outcome["ok"] else 1)


if __name__ == "__main__":
    main()
