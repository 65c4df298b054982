"""detain's guest launcher: the first Python code to run inside every sandbox.

It runs as `python -I -S [-X dev -W error] launcher.py FD RLIMITS [OPTIONS] KIND TARGET
[ARGS...]` (FD: the channel's inherited fd, or the path of a FIFO where no fd can be
passed in, as into a container) and, before any untrusted byte executes:
  1. lowers its own resource limits (irreversible: the job cannot raise them back, and in a
     user namespace they count only this sandbox's processes);
  2. records what it can observe of its confinement (uid, seccomp, namespaces, network
     interfaces, limits) and writes it to the host as the first channel record — trustworthy
     because nothing untrusted has run yet (a launcher started ahead reads the confinement
     while it waits, the limits after the job's message);
  3. with `--proxy PORT:SOCKET`, forwards 127.0.0.1:PORT to the host's allow-list proxy
     and sets HTTP(S)_PROXY to it (guest/forward.py); then, with `--deps DIR`, installs
     the job's requirements into a throw-away venv in its working (scratch) dir and
     appends its site-packages to sys.path (guest/deps.py);
  4. runs the target with runpy / exec, exactly as `python` would, or, with
     `--restricted`, compiled by RestrictedPython (guest/restricted.py); `--path DIR`
     (repeatable) prepends DIR to sys.path first, for what those helpers import.
Just before step 4, guest/audit.py installs a PEP 578 audit hook that streams what the job
does (opens, sockets, processes, code execution, imports, native calls) as `event` records.
Records written after step 4 starts share a process with the job and are marked
in-process by the host, because the job could forge them. The helpers are sibling files,
loaded by path: under -I the launcher's own dir is not on sys.path.

`launcher.py --job-from SOURCE [--ready CHANNEL] [--label TEXT]` is the same launcher
started ahead of its job (a warm spare on the host, a micro-VM saved with the interpreter
already up): it loads what every job needs (the audit hook, runpy), writes a `ready`
record to CHANNEL if given, then blocks reading one message from SOURCE, an inherited fd
or a FIFO's path (4-byte big-endian length, then NUL-separated fields: the argument count,
the arguments above from FD on, then the job's environment as KEY=VALUE), and continues
exactly as if started with them. TEXT is only shown to the host's `ps` (the selftest finds
a job's processes by it). Whoever starts it early must already have confined it (uid,
no_new_privs, seccomp, namespaces); the job's own limits are applied here, after the
message, as always, and the assurance is observed after them.

The body is launch.py, loaded from here through the import system's frozen core, so it
comes from its cached .pyc: Python compiles the script it is started with on every start,
and compiling the whole launcher cost each sandbox a few ms before anything else ran.
Loaded as a module (a zygote does), this file offers the body's `sibling` and `main`.
"""

import os
import sys


def _load_body():
    bootstrap = sys.modules["_frozen_importlib"]
    external = sys.modules["_frozen_importlib_external"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
    spec = external.spec_from_file_location("detain_guest_launch", path)
    module = bootstrap.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_body = _load_body()
sibling, main = _body.sibling, _body.main

if __name__ == "__main__":
    main()
