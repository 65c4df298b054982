"""The guest launcher's body; launcher.py, its entry point, says what it does and why it
lives in this separate file."""

import builtins
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
    """Soft = hard, except CPU: SIGXCPU at the soft limit names the cause, SIGKILL 1 s later.

    The CPU budget is the job's own: seconds this process already spent (the interpreter's
    start-up, slow under an emulated CPU, or spent before a saved VM was restored) are added.
    """
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        number = int(value)
        if name == "CPU":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            number += -int(-(usage.ru_utime + usage.ru_stime) // 1)  # rounded up
        hard = number + 1 if name == "CPU" else number
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (number, hard))


def observe_confinement():
    """What the sandbox itself is: fixed from the launcher's start, as nothing but the
    launcher has run in it (a launcher waiting for its job reads it while it waits)."""
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
    return {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "status": status, "namespaces": namespaces, "interfaces": interfaces,
        "hostname": os.uname().nodename, "cgroup": (_read("/proc/self/cgroup") or "")[:4096],
        "cwd": os.getcwd(), "pid": os.getpid(),
    }


def observe(confinement):
    """The assurance record: the confinement, and the limits and environment as the job
    will have them."""
    limits = {}
    for name in ("AS", "CPU", "NPROC", "FSIZE", "NOFILE", "CORE"):
        soft, _ = resource.getrlimit(getattr(resource, "RLIMIT_" + name))
        limits[name] = soft
    return {**confinement, "rlimits": limits, "environ_keys": sorted(os.environ)}


_ESCAPES = {i: "\\u%04x" % i for i in range(32)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r",
                 ord("\t"): "\\t"})


def to_json(value):
    """JSON for str/int/bool/None/list/dict. Not `json`: importing it (and `re`) would
    triple the launcher's start-up time."""
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(to_json(str(k)) + ":" + to_json(v) for k, v in value.items()) + "}"
    return "[" + ",".join(to_json(item) for item in value) + "]"


class Channel:
    """Line-delimited JSON to the host; the host caps and validates everything it reads."""

    def __init__(self, fd):
        self.fd = fd

    def send(self, record):
        data = (to_json(record) + "\n").encode("utf-8", "surrogateescape")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass


_SIBLINGS = {}


def sibling(name):
    """Load guest/NAME.py, next to this file, as a module (its cached .pyc when fresh), once.

    Through the import system's frozen core, already loaded at start-up: `importlib.util`
    would import contextlib, collections and functools first, a third of our start-up.
    """
    if name in _SIBLINGS:
        return _SIBLINGS[name]
    bootstrap, external = sys.modules["_frozen_importlib"], sys.modules[
        "_frozen_importlib_external"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = external.spec_from_file_location("detain_guest_" + name, path)
    module = bootstrap.module_from_spec(spec)
    spec.loader.exec_module(module)
    _SIBLINGS[name] = module
    return module


def parse_options(argv):
    """Split `[--path DIR]... [--deps DIR] [--proxy PORT:SOCKET] [--restricted] KIND ...`."""
    options = {"path": [], "deps": None, "restricted": False, "proxy": None}
    while argv and argv[0].startswith("--"):
        name = argv.pop(0)[2:]
        if name == "restricted":
            options["restricted"] = True
        elif name == "path":
            options["path"].append(argv.pop(0))
        elif name == "deps":
            options["deps"] = argv.pop(0)
        elif name == "proxy":
            options["proxy"] = argv.pop(0)
        else:
            raise SystemExit("detain launcher: unknown option --" + name)
    return options, argv


def run_target(kind, target, args):
    if kind == "script":
        import runpy

        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")
    elif kind == "module":
        import runpy

        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *args]
        main = sys.modules["__main__"]
        # The builtins module, as `python -c` gives it (a module's own __builtins__ is a dict)
        namespace = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None,
                     "__spec__": None, "__loader__": main.__loader__}
        exec(compile(target, "<string>", "exec"), namespace)


def _ours(filename):
    """A frame of detain's, not the job's: this launcher and its siblings, and runpy (whose
    frames a plain `python script.py` never shows), frozen or not."""
    runpy_file = getattr(sys.modules.get("runpy"), "__file__", None)
    return (filename in (runpy_file, "<frozen runpy>")
            or os.path.dirname(filename) == os.path.dirname(os.path.abspath(__file__)))


def _strip_ours(summary, seen=None):
    """Drop detain's frames from a TracebackException and every exception chained to it."""
    import traceback

    seen = set() if seen is None else seen
    if summary is None or id(summary) in seen:
        return
    seen.add(id(summary))
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if not _ours(frame.filename)])
    for linked in (summary.__cause__, summary.__context__, *(summary.exceptions or ())):
        _strip_ours(linked, seen)


def print_job_traceback(exc):
    """Print the traceback as plain `python` would: only the job's frames, anywhere in the
    chain. A MemoryError may leave too little memory to format it: then its last line."""
    try:
        import traceback

        summary = traceback.TracebackException.from_exception(exc)
        _strip_ours(summary)
        sys.stderr.write("".join(summary.format()))
    except MemoryError:
        sys.stderr.write(type(exc).__name__ + "\n")
    sys.stderr.flush()


def show_unraisable(unraisable):
    """`sys.unraisablehook`: a ResourceWarning that -W error raised where Python can only
    ignore it (an unclosed file finalised) is one `file:line: ResourceWarning: ...` line,
    as a warning is shown, not an "Exception ignored in" traceback; anything else as usual."""
    if not isinstance(unraisable.exc_value, ResourceWarning):
        sys.__unraisablehook__(unraisable)
        return
    import traceback

    frames = [f for f in traceback.extract_tb(unraisable.exc_traceback) if not _ours(f.filename)]
    where = (frames[-1].filename, frames[-1].lineno) if frames else ("sys", 1)  # as Python
    sys.stderr.write("%s:%s: ResourceWarning: %s\n" % (*where, unraisable.exc_value))


def cpu_seconds():
    """This process's CPU time and that of the children it waited for, as the job ends.
    The host's count misses those children where no cgroup or subreaper holds the run."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def read_job(fd):
    """`--job-from FD`: the launcher's arguments and the job's environment, from one message."""
    def read_exact(size):
        data = b""
        while len(data) < size:
            chunk = os.read(fd, size - len(data))
            if not chunk:
                raise SystemExit("detain launcher: the job message ended early")
            data += chunk
        return data

    fields = read_exact(int.from_bytes(read_exact(4), "big")).decode(
        "utf-8", "surrogateescape").split("\0")
    os.close(fd)
    count = int(fields[0])
    return fields[1:1 + count], dict(item.split("=", 1) for item in fields[1 + count:])


def open_end(spec, flags):
    """An inherited fd given by number, or a FIFO given by path."""
    return int(spec) if spec.isdigit() else os.open(spec, flags | os.O_CLOEXEC)


def wait_for_job(source, ready):
    """`--job-from`: load what every job uses while no job is waiting, say so on the
    channel `ready` (if given), then read the job.

    The first compile() in a process pays the compiler's own set-up (about 1.5 ms); one
    throw-away compile moves that out of the job's time."""
    import runpy  # noqa: F401  (scripts and modules run through it)

    sibling("audit")
    compile("pass", "<warm-up>", "exec")
    confinement = observe_confinement()
    job = open_end(source, os.O_RDONLY)  # before `ready`: a FIFO's writer may then close
    if ready is not None:
        Channel(open_end(ready, os.O_WRONLY)).send({"type": "ready"})
    return confinement, read_job(job)


def main():
    confinement = None
    if sys.argv[1:2] == ["--job-from"]:
        waiting = {sys.argv[i]: sys.argv[i + 1] for i in range(1, len(sys.argv) - 1, 2)}
        confinement, (sys.argv[1:], environ) = wait_for_job(waiting["--job-from"],
                                                            waiting.get("--ready"))
        os.environ.clear()
        os.environ.update(environ)
    fd, rlimits, *rest = sys.argv[1:]
    options, (kind, target, *args) = parse_options(rest)
    apply_limits(rlimits)
    channel = Channel(open_end(fd, os.O_WRONLY))
    channel.send({"type": "hello", "assurance": observe(confinement or observe_confinement())})
    sys.path[:0] = options["path"]
    if options["proxy"] is not None:  # before deps: pip may reach the index through it
        sibling("forward").start(options["proxy"])
    if options["deps"] is not None:
        record = sibling("deps").install(options["deps"], os.getcwd())
        channel.send(record)
        if not record["ok"]:
            sys.exit(2)
        sys.path.extend(record["paths"])
    sibling("audit").install(channel.fd, to_json, kind, target)
    sys.unraisablehook = show_unraisable
    status = memory_error = None
    try:
        try:
            if options["restricted"]:
                sibling("restricted").run(kind, target, args)
            else:
                run_target(kind, target, args)
        except MemoryError as exc:
            memory_error = True
            print_job_traceback(exc)
            status = 1
        except SystemExit:
            raise
        except BaseException as exc:
            print_job_traceback(exc)
            status = 1
    finally:
        channel.send({"type": "exit", "memory_error": memory_error is True,
                      "cpu_ms": int(cpu_seconds() * 1000)})
    if status is not None:
        sys.exit(status)
