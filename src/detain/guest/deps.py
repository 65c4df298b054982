"""Install a job's requirements inside its sandbox, before the job runs (stdlib only).

DIR (read-only, staged by the host) holds `requirements.txt` and `wheelhouse/`. A fresh
venv is created in the scratch dir and pip, taken from the interpreter's own bundled wheel
(ensurepip's, or Debian's python-wheels), installs into it with no index and wheels only,
so no package code runs. pip runs in a child process: its modules never enter the job's
interpreter, and the job (which runs with -S) gets the venv's site-packages appended to
sys.path, after the stdlib, as a venv would.
"""

import glob
import os
import subprocess
import sys
import sysconfig
import time
import venv

VENV_NAME = ".detain-venv"
OUTPUT_CAP = 4000


def pip_wheel():
    """The pip wheel this interpreter ships with, or None."""
    places = []
    try:
        import ensurepip

        places.append(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled"))
    except ImportError:  # Debian splits ensurepip out; its wheels live in /usr/share
        pass
    places.append("/usr/share/python-wheels")
    for place in places:
        found = sorted(glob.glob(os.path.join(place, "pip-*.whl")))
        if found:
            return found[-1]
    return None


def site_paths(prefix):
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    config = {"base": prefix, "platbase": prefix}
    paths = [sysconfig.get_path(key, scheme, vars=config) for key in ("purelib", "platlib")]
    return list(dict.fromkeys(paths))


def install(deps_dir, workdir):
    """Build the venv and install into it; returns the channel record to send."""
    started = time.monotonic()
    prefix = os.path.join(workdir, VENV_NAME)
    record = {"type": "deps", "ok": False, "venv": prefix}
    try:
        venv.EnvBuilder(symlinks=True, with_pip=False).create(prefix)
    except OSError as exc:
        record["error"] = "creating the venv failed: %s" % exc
        return record
    requirements = os.path.join(deps_dir, "requirements.txt")
    with open(requirements, encoding="utf-8") as handle:
        wanted = [line for line in handle.read().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    if wanted:
        wheel = pip_wheel()
        if wheel is None:
            record["error"] = ("this interpreter ships no pip wheel (ensurepip); install "
                               "python3-venv or python3-pip-whl")
            return record
        python = os.path.join(prefix, "bin", "python")
        tmp = os.path.join(workdir, ".detain-tmp")
        os.makedirs(tmp, exist_ok=True)
        argv = [python, "-I", os.path.join(wheel, "pip"), "install", "--isolated",
                "--no-index", "--find-links", os.path.join(deps_dir, "wheelhouse"),
                "--only-binary", ":all:", "--no-cache-dir", "--disable-pip-version-check",
                "--no-input", "--no-warn-script-location", "--no-compile", "--quiet", "-r",
                requirements]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": tmp,
               "HOME": workdir, "LANG": "C.UTF-8"}
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              check=False)
        try:
            os.rmdir(tmp)
        except OSError:
            pass
        if done.returncode != 0:
            output = (done.stderr or done.stdout).decode("utf-8", "replace")
            sys.stderr.write(output[-OUTPUT_CAP:])
            record["error"] = "pip exited with %d: %s" % (
                done.returncode, (output.strip().splitlines() or ["no output"])[-1])
            return record
    paths = site_paths(prefix)
    installed = 0
    for path in paths:
        if os.path.isdir(path):
            installed += len([n for n in os.listdir(path) if n.endswith(".dist-info")])
    record.update(ok=True, paths=paths, installed=installed,
                  ms=int((time.monotonic() - started) * 1000))
    return record
