"""PEP 578 audit hook: what the job did, streamed to the host as it happens.

Loaded by the launcher (stdlib only, like it) and installed just before the target runs.
Everything here shares a process with untrusted code, which can forge, hide or reorder
what we send: the host marks these records `in-process` and checks their sequence. What
this module can do is keep the evidence useful and cheap:

* a fixed set of watched events, looked up in a dict, so the thousands of uninteresting
  events an import-heavy job raises cost one lookup each;
* the import machinery's own opens/execs/unmarshals are skipped (the `import` event says
  it), as are stdlib-internal imports and compiles (namedtuple, dataclasses): only what the
  job's own code asked for is reported;
* each record names the job's file:line (the innermost frame that is neither stdlib,
  frozen importlib nor detain's guest code), not the launcher's;
* a per-kind budget and a total budget bound what crosses the channel; beyond them events
  are only counted, so a flood of one kind cannot hide another, and the final `done`
  record carries the counts;
* records are kept under PIPE_BUF, so concurrent writes (threads, a forging job) can
  never interleave inside one line.
"""

import atexit
import itertools
import os
import sys
import time

PER_KIND = 400
TOTAL = 4000
BYTES = 3 << 20  # the host reads 4 MiB: room left for the final summary
TEXT_CAP = 300
RECORD_CAP = 3800  # below PIPE_BUF (4096): one write, never interleaved
MODULES_CAP = 400
CACHE_CAP = 4096  # file-name classifications kept; a job opening many files cannot grow it

# event -> category; "direct" categories must be raised by the job's own frame, the others
# may come through the stdlib on the job's behalf (pathlib's open, socket.create_connection).
FILE_EVENTS = ("open", "os.remove", "os.unlink", "os.rename", "os.rmdir", "os.mkdir",
               "os.chmod", "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime",
               "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
               "shutil.move", "shutil.make_archive", "shutil.unpack_archive")
WATCH = dict.fromkeys(FILE_EVENTS, "file")
WATCH.update(dict.fromkeys(("socket.connect", "socket.bind", "socket.sendto",
                            "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname",
                            "socket.gethostbyname_ex", "socket.gethostbyaddr",
                            "urllib.Request", "http.client.connect", "ftplib.connect",
                            "smtplib.connect", "telnetlib.Telnet.open"), "network"))
WATCH.update(dict.fromkeys(("subprocess.Popen", "os.system", "os.exec", "os.spawn",
                            "os.posix_spawn", "os.fork", "os.forkpty", "os.kill",
                            "os.killpg", "pty.spawn", "os.startfile"), "process"))
WATCH.update(dict.fromkeys(("ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
                            "ctypes.cdata", "ctypes.string_at"), "native"))
WATCH.update(dict.fromkeys(("pickle.find_class", "marshal.loads", "marshal.load"),
                           "deserialize"))
WATCH.update({"compile": "code", "exec": "code", "import": "import",
              "sys.addaudithook": "hook"})
DIRECT = frozenset(("code", "import", "deserialize"))

STDLIB, GUEST, JOB = 0, 1, 2


class Auditor:
    """The hook's state; one instance per run, reachable by the job like everything else."""

    def __init__(self, fd, to_json, job_root):
        self.fd = fd
        self.to_json = to_json
        self.started = time.monotonic()
        self.seq = itertools.count(1)
        self.sent = 0
        self.bytes = 0
        self.observed = 0
        self.per_kind = {}
        self.dropped = {}
        self.modules = []
        self.done = False
        self.kinds = {}
        here = os.path.dirname(os.path.abspath(__file__))
        stdlib = os.path.dirname(os.__file__)
        self.guest_dir = here
        self.stdlib = stdlib + os.sep
        self.job_root = job_root

    def classify(self, filename):
        """STDLIB, GUEST or JOB for a code object's filename (cached: one dict hit)."""
        kind = self.kinds.get(filename)
        if kind is None:
            if filename.startswith("<frozen "):
                kind = STDLIB
            elif os.path.dirname(filename) == self.guest_dir:
                kind = GUEST
            elif filename.startswith(self.stdlib) and (
                    "-packages" + os.sep not in filename[len(self.stdlib):]):
                kind = STDLIB
            else:
                kind = JOB
            if len(self.kinds) < CACHE_CAP:
                self.kinds[filename] = kind
        return kind

    def locate(self, event, direct):
        """The job's frame that caused the event, or None when the job did not.

        Whatever the import machinery does (reading, unmarshalling and running a module,
        and a stdlib module's own import-time work) is left out: the `import` event says it.
        """
        frame = sys._getframe(2)
        if direct:
            if event != "import" and frame.f_code.co_filename.startswith("<frozen importlib"):
                return None
            while frame is not None and frame.f_code.co_filename.startswith("<frozen "):
                frame = frame.f_back
            if frame is None or self.classify(frame.f_code.co_filename) != JOB:
                return None
            return frame
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith("<frozen importlib"):
                return None
            if self.classify(filename) == JOB:
                return frame
            frame = frame.f_back
        return None

    def hook(self, event, args):
        category = WATCH.get(event)
        if category is None or self.done:
            return
        try:
            if self.routine(event, args):
                return
            frame = self.locate(event, category in DIRECT)
            if frame is None:
                return
            self.observed += 1
            count = self.per_kind.get(event, 0) + 1
            self.per_kind[event] = count
            if count > PER_KIND or self.sent >= TOTAL or self.bytes >= BYTES:
                self.dropped[event] = self.dropped.get(event, 0) + 1
                return
            self.emit(event, category, frame, args)
        except Exception:
            self.dropped["<hook error>"] = self.dropped.get("<hook error>", 0) + 1

    def routine(self, event, args):
        """Cheap early exits, before any frame is looked at: running stdlib module code and
        reading stdlib files are what every import does, never what a report is about."""
        if event == "exec":
            return self.classify(getattr(args[0], "co_filename", "")) == STDLIB
        if event == "open" and len(args) > 1 and args[1] == "r":
            return isinstance(args[0], str) and self.classify(args[0]) == STDLIB
        return False

    def emit(self, event, category, frame, args):
        if event == "import" and len(self.modules) < MODULES_CAP:
            self.modules.append(str(args[0]))
        record = {"type": "event", "seq": next(self.seq),
                  "t_us": int((time.monotonic() - self.started) * 1e6),
                  "event": event, "category": category,
                  "file": clip(frame.f_code.co_filename), "line": frame.f_lineno or 0,
                  "args": summarise(event, args)}
        self.sent += 1
        data = self.encode(record)
        if len(data) > RECORD_CAP:
            record["args"] = {"truncated": True}
            data = self.encode(record)
        self.bytes += len(data)
        self.write(data)

    def encode(self, record):
        return (self.to_json(record) + "\n").encode("utf-8", "backslashreplace")

    def write(self, data):
        try:
            os.write(self.fd, data)
        except OSError:
            pass

    def finish(self):
        """The in-process summary: counts, drops, and where imported modules came from."""
        if self.done:
            return
        self.done = True
        modules = {}
        for name in self.modules:
            module = sys.modules.get(name)
            path = getattr(module, "__file__", None) if module is not None else None
            modules[name] = clip(path) if isinstance(path, str) else None
        self.write(self.encode({"type": "done", "seq": next(self.seq), "sent": self.sent,
                                "observed": self.observed, "dropped": self.dropped,
                                "modules": modules}))


def clip(value):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= TEXT_CAP else text[:TEXT_CAP] + "..."


def path_of(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # open(5) / os.fdopen(5): a descriptor, which the host tells from a path
    if isinstance(value, bytes):
        return clip(value.decode("utf-8", "backslashreplace"))
    return clip(value if isinstance(value, (str, int)) else repr(value))


def summarise(event, args):
    """A few small, JSON-ready fields per event; never the job's objects themselves."""
    if event == "open":
        path, mode, flags = (*args, None, None, None)[:3]
        return {"path": path_of(path), "mode": clip(mode) if mode else None,
                "flags": flags if isinstance(flags, int) else None}
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
        return {"address": clip(args[1] if len(args) > 1 else args)}
    if event == "socket.getaddrinfo":
        return {"host": clip(args[0]), "port": clip(args[1])}
    if event.startswith("socket.gethostby"):
        return {"host": clip(args[0])}
    if event == "urllib.Request":
        return {"url": clip(args[0]), "method": clip(args[3]) if len(args) > 3 else None}
    if event in ("http.client.connect", "ftplib.connect", "smtplib.connect"):
        return {"host": clip(args[1]), "port": clip(args[2])}
    if event == "subprocess.Popen":
        return {"executable": path_of(args[0]), "argv": clip(args[1])}
    if event == "os.system":
        return {"command": path_of(args[0])}
    if event in ("os.exec", "os.posix_spawn", "os.spawn"):
        offset = 1 if event == "os.spawn" else 0
        return {"executable": path_of(args[offset]), "argv": clip(args[offset + 1])}
    if event == "compile":
        source = args[0]
        if not isinstance(source, (str, bytes)):
            return {"source": "<ast>", "filename": path_of(args[1])}
        return {"source": clip(source[:TEXT_CAP]), "length": len(source),
                "filename": path_of(args[1])}
    if event == "exec":
        code = args[0]
        return {"code": clip(getattr(code, "co_filename", "?"))}
    if event == "import":
        return {"module": clip(args[0])}
    if event == "ctypes.dlopen":
        return {"library": path_of(args[0])}
    if event == "pickle.find_class":
        return {"global": clip("%s.%s" % (args[0], args[1]))}
    if event in ("marshal.loads", "marshal.load"):
        return {"length": len(args[0]) if isinstance(args[0], (bytes, bytearray)) else None}
    if event in FILE_EVENTS:
        return {"path": path_of(args[0]),
                "target": path_of(args[1]) if event in ("os.rename", "os.symlink", "os.link",
                                                        "shutil.copyfile", "shutil.move")
                else None}
    return {"args": clip(args)}


def install(fd, to_json, kind, target):
    """Start auditing on channel `fd`, with the launcher's encoder.

    The `audit` record, sent before the job runs (so not forgeable by it), names the job's
    root: the host reports paths under it relative to it, like the static scan does.
    """
    job_root = os.path.dirname(os.path.abspath(target)) if kind == "script" else os.getcwd()
    auditor = Auditor(fd, to_json, job_root)
    auditor.write(auditor.encode({"type": "audit", "job_root": job_root,
                                  "per_kind": PER_KIND, "total": TOTAL}))
    sys.addaudithook(auditor.hook)
    atexit.register(auditor.finish)
    return auditor
