"""detain's guest launcher: the first Python code to run inside every sandbox.

It runs as `python -I -S [-X dev -W error] launcher.py FD RLIMITS KIND TARGET [ARGS...]`
and, before any untrusted byte executes:
  1. lowers its own resource limits (irreversible: the job cannot raise them back, and in a
     user namespace they count only this sandbox's processes);
  2. records what it can observe of its confinement (uid, seccomp, namespaces, network
     interfaces, limits) and writes it to the host as the first channel record — trustworthy
     because nothing untrusted has run yet;
  3. runs the target with runpy / exec, exactly as `python` would.
Records written after step 3 share a process with the job and are marked in-process by the
host, because the job could forge them.
"""

import json
import os
import resource
import sys

NAMESPACES = ("user", "pid", "net", "ipc", "uts", "mnt", "cgroup")
STATUS_FIELDS = ("Seccomp", "Seccomp_filters", "NoNewPrivs", "CapEff", "CapBnd")


def _read(path, limit=65536):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def apply_limits(spec):
    """Soft = hard, except CPU: SIGXCPU at the soft limit names the cause, SIGKILL 1 s later."""
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        number = int(value)
        hard = number + 1 if name == "CPU" else number
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (number, hard))


def observe():
    status = {}
    for line in (_read("/proc/self/status") or "").splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            status[key] = value.strip()
    namespaces = {}
    for name in NAMESPACES:
        try:
            namespaces[name] = os.readlink("/proc/self/ns/" + name)
        except OSError:
            namespaces[name] = None
    interfaces = [line.split(":", 1)[0].strip()
                  for line in (_read("/proc/net/dev") or "").splitlines()[2:] if ":" in line]
    limits = {}
    for name in ("AS", "CPU", "NPROC", "FSIZE", "NOFILE", "CORE"):
        soft, _ = resource.getrlimit(getattr(resource, "RLIMIT_" + name))
        limits[name] = soft
    return {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "status": status, "namespaces": namespaces, "interfaces": interfaces,
        "rlimits": limits, "hostname": os.uname().nodename,
        "cgroup": (_read("/proc/self/cgroup") or "")[:4096],
        "environ_keys": sorted(os.environ), "cwd": os.getcwd(), "pid": os.getpid(),
    }


class Channel:
    """Line-delimited JSON to the host; the host caps and validates everything it reads."""

    def __init__(self, fd):
        self.fd = fd

    def send(self, record):
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass


def run_target(kind, target, args):
    import runpy

    if kind == "script":
        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")
    elif kind == "module":
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *args]
        main = sys.modules["__main__"]
        namespace = {"__name__": "__main__", "__builtins__": __builtins__, "__doc__": None,
                     "__spec__": None, "__loader__": main.__loader__}
        exec(compile(target, "<string>", "exec"), namespace)


def print_job_traceback(exc):
    """Print the traceback as plain `python` would: without the launcher's own frames."""
    import traceback

    tb = exc.__traceback__
    own = (__file__, getattr(sys.modules.get("runpy"), "__file__", None))
    while tb is not None and tb.tb_frame.f_code.co_filename in own:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def main():
    fd, rlimits, kind, target, *args = sys.argv[1:]
    apply_limits(rlimits)
    channel = Channel(int(fd))
    channel.send({"type": "hello", "assurance": observe()})
    try:
        run_target(kind, target, args)
    except MemoryError:
        channel.send({"type": "exit", "memory_error": True})
        raise
    except SystemExit:
        raise
    except BaseException as exc:
        print_job_traceback(exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
