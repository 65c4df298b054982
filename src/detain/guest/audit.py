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
* each record names the job's file:line: the innermost frame in the code under test, not
  the stdlib, frozen importlib, detain's guest code or a dependency installed in a
  site-packages dir (traffic made through requests is the caller's line, not urllib3's).
  Code made by exec/compile (`<string>`) is attributed to the line that ran it, the
  pseudo-frames kept in `via`; a whole file exec'd by a runner (setuptools runs setup.py
  as `<string>`) is named by the `__file__` it was given;
* what no audit event shows is made to raise one: environment reads (the one dict behind
  os.environ, os.environb and posix.environ is replaced by an auditing subclass, see
  AuditedEnviron; a credential-looking name or a decoy `detain package` planted is
  reported) and the name a socket is about to resolve in connect()/sendto() (CPython
  resolves it before `socket.connect` is raised, so a failing lookup left no trace);
* a code object the job makes under another file's name (CodeType(), code.replace(),
  compile() or marshal.loads() naming a stdlib, dependency or detain file) is a
  `code.forged` event, and frames of such code count as the job's from then on:
  attribution trusts co_filename;
* a child Python (pip's build of an sdist) runs `install_child` from a .pth file and
  writes its records to a file; the phase that started it relays them through
  `sys.audit("detain.relay", record)`, renumbered into this channel;
* a per-kind budget and a total budget bound what crosses the channel; beyond them events
  are only counted, so a flood of one kind cannot hide another, and the final `done`
  record carries the counts;
* records are kept under PIPE_BUF, so concurrent writes (threads, a forging job) can
  never interleave inside one line.
"""

import _thread
import atexit
import functools
import itertools
import marshal
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
              "sys.addaudithook": "hook", "os.environ.get": "env", "os.environ.iter": "env",
              # around the hook: objects read through the collector (the environment's
              # dict behind its auditing methods), code run in a subinterpreter (no hook)
              "gc.get_referents": "hook", "gc.get_referrers": "hook",
              "gc.get_objects": "hook", "cpython.PyInterpreterState_New": "hook",
              # raised by CodeType() and code.replace(); reported as `code.forged`, only
              # when the job's own frame names another file (see Auditor.forgery)
              "code.__new__": "code", "code.forged": "code"})
DIRECT = frozenset(("code", "import", "deserialize"))
# Not reported themselves: the first socket object is when connect/sendto get wrapped; a
# relay carries a child process's record; `detain.decoys` names the planted variables.
SETUP = ("socket.__new__", "detain.relay", "detain.guest", "detain.dependencies",
         "detain.decoys")
FORGED_CAP = 64  # file names remembered as forged; past it, a forgery is still reported
DECOYS_CAP = 64  # decoy variable names taken from a claim
WATCH.update(dict.fromkeys(SETUP, "setup"))
VIA_CAP = 8
STACK_CAP = 300  # frames looked through for an exec'd file's module frame
# pip's build hooks run from a copy of pyproject_hooks' script in the temp dir (tmpXXXX_…)
IN_PROCESS = ("tmp", "_in_process.py")
WRITTEN_TARGET = ("os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.move")
ORIGINS_CAP = 1024  # threads and exit handlers whose origin is kept
# Environment names worth a record: what credentials are called. Reading PATH or HOME is
# what every library does and would only bury these.
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSW", "CREDENTIAL", "AUTH", "SESSION", "COOKIE",
                "PRIVATE", "API")
SECRET_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCP_", "GITHUB_", "GH_", "GITLAB_", "NPM_",
                   "PYPI_", "TWINE_", "DOCKER_", "SLACK_", "STRIPE_", "OPENAI_", "HF_",
                   "CI_JOB_", "ACTIONS_")

STDLIB, GUEST, JOB, DEPENDENCY, PSEUDO = 0, 1, 2, 3, 4
FORGING = ("code.__new__", "compile")  # events whose args[1] names the code's file
FORGED_BY = {"code.__new__": "CodeType/replace", "compile": "compile",
             "marshal.loads": "marshal", "exec": "a module's compiled file (.pyc)"}
IMPORTLIB_ENTRY = os.sep + os.path.join("importlib", "__init__.py")
MARSHAL_CAP = 1 << 20  # bytes a job unmarshals that are looked through for code objects
UNDER_TEST = (JOB, PSEUDO)
# os.getenv and Mapping.get: frozen in the interpreter, or source files where not
ENVIRON_HELPERS = ("<frozen os>", "<frozen _collections_abc>", os.sep + "os.py",
                   os.sep + "_collections_abc.py")


def dependency_name(filename):
    """The distribution-ish name of a dependency's file: the first component after
    site-packages (or a zipped wheel), else the file's own name."""
    for marker in ("-packages" + os.sep, ".whl" + os.sep):
        if marker in filename:
            return clip(filename.rsplit(marker, 1)[1].split(os.sep, 1)[0])
    return clip(os.path.basename(filename))


def in_process(name):
    return name.startswith(IN_PROCESS[0]) and name.endswith(IN_PROCESS[1])


def nested_codes(code, cache):
    """`code` and every code object defined in it, at any depth (cached per code)."""
    found = cache.get(code)
    if found is None:
        found, todo = set(), [code]
        while todo and len(found) < CACHE_CAP:
            current = todo.pop()
            found.add(current)
            todo.extend(c for c in current.co_consts if isinstance(c, type(code)))
        if len(cache) < 64:
            cache[code] = found
    return found


def module_code(frame, seen):
    """The module code whose globals `frame` runs in: the `<module>` frame further out
    with the same globals (setup.py's, still running `setup()` while a cmdclass override
    runs), or the one last seen with them (`seen`, a small cache), else the frame's own."""
    globals_ = frame.f_globals
    outer = frame
    for _ in range(STACK_CAP):
        if outer is None:
            break
        if outer.f_globals is globals_ and outer.f_code.co_name == "<module>":
            if len(seen) < 64:
                seen[id(globals_)] = (globals_, outer.f_code)  # held: the id stays unique
            return outer.f_code
        outer = outer.f_back
    held = seen.get(id(globals_))
    return held[1] if held is not None else frame.f_code


def pseudo_names(frames):
    return [clip("%s:%d" % (f.f_code.co_filename, f.f_lineno or 0)) for f in frames[:VIA_CAP]]


def secret_looking(name):
    upper = name.upper() if isinstance(name, str) else ""
    return upper.startswith(SECRET_PREFIXES) or any(w in upper for w in SECRET_WORDS)


def is_ip_literal(host):
    import _socket

    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            pass
    return False


class Auditor:
    """The hook's state; one instance per run, reachable by the job like everything else."""

    def __init__(self, fd, to_json, job_root, roots=None, quiet=()):
        self.fd = fd
        self.roots = tuple(roots) if roots else None  # the code under test, when known
        # where a dependency's file work is its own business: the build backend's churn in
        # its build and temp dirs (relative paths too) would fill the budgets otherwise
        self.quiet = tuple(quiet)
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
        self.sockets_wrapped = False
        self.guest_claimed = False
        # file -> distribution, for the vetted package's dependencies (package_phase.py's
        # import phase claims them first); None: a dependency lies in a site-packages dir
        self.dependencies = None
        self.nested = {}  # exec'd module code -> the code objects it defines
        self.origins = {}  # thread id -> [(file, line, via, kind)]: see remember_origins
        self.site_root = None  # where the vetted package's dependencies are installed
        self.written = set()  # files the code under test wrote (see wrote)
        # the interpreter's own install (read-only in every sandbox: its site-packages,
        # the pip wheel it ships) and Debian's wheels
        self.installed = (sys.base_prefix.rstrip(os.sep) + os.sep, "/usr/share/python-wheels/")
        self.modules_seen = {}  # id(globals) -> (globals, its exec'd module code)
        self.stream = None  # a forked process's label (after_fork); None: the launcher's
        self.forking = None
        # names of the variables `detain package` planted as decoys (package_phase.py
        # claims them before any package code runs; a child's come from its boot file)
        self.decoys = None
        self.variables = {}  # environment variable name -> watched()
        # forged file name -> (the forger's file as reported, the forging line when the
        # code's own lines are not the forger's (compile, marshal) else None, the code names
        # made under it, or None: any, for compile()'s module code and what it defines)
        self.forged = {}

    def watched(self, name):
        """Whether reading environment variable `name` is worth a record (cached: every
        read of any variable asks)."""
        if not isinstance(name, str):
            return False
        known = self.variables.get(name)
        if known is None:
            known = secret_looking(name) or (self.decoys is not None and name in self.decoys)
            if len(self.variables) < CACHE_CAP and len(name) <= TEXT_CAP:
                self.variables[name] = known
        return known

    def claim_decoys(self, names):
        """The decoy variables' names; only the first claim counts (a job cannot unwatch)."""
        if self.decoys is None and isinstance(names, (list, tuple, frozenset)):
            self.decoys = frozenset(str(n) for n in list(names)[:DECOYS_CAP])
            self.variables = {}

    def kind_of(self, code):
        """classify() for a running code object: code made under a forged name (that name
        and code name) is PSEUDO, the job's, whatever file it claims to be."""
        if self.forged:
            forged = self.forged.get(code.co_filename)
            if forged is not None and (forged[2] is None or code.co_name in forged[2]):
                return PSEUDO
        return self.classify(code.co_filename)

    def frozen(self, code, prefix="<frozen "):
        """Whether code is the interpreter's frozen code (importlib's, os'), not forged."""
        return code.co_filename.startswith(prefix) and self.kind_of(code) != PSEUDO

    def foreign(self, filename):
        """Whether code named `filename` would be taken for something other than the code
        under test (the stdlib, frozen importlib, a dependency, detain's own guest code)."""
        if isinstance(filename, bytes):
            filename = filename.decode("utf-8", "surrogateescape")
        return isinstance(filename, str) and self.classify(filename) not in UNDER_TEST

    def unmarshalled(self, data, where):
        """Code objects the job's marshal.loads() is about to make (no code.__new__ is
        raised for them): loaded once more here, size-capped, for the files they name.
        The hook's own load raises `marshal.loads` from this (guest) frame: not the job's."""
        if not isinstance(data, (bytes, bytearray)) or len(data) > MARSHAL_CAP:
            return
        try:
            loaded = marshal.loads(data)  # noqa: S302 (what the job is about to load anyway)
        except Exception:
            return
        if isinstance(loaded, type(self.unmarshalled.__code__)):
            for code in nested_codes(loaded, {}):
                if self.foreign(code.co_filename):
                    self.forgery("marshal.loads", code.co_filename, code.co_name, where)

    def forgery(self, event, filename, name, where):
        """Report and remember a code object the code under test made under another
        file's name (`name`: the code's, None for compile()'s module code and all it
        defines): its frames are attributed to the job from now on (their lines are the
        forger's own when made by code.replace(), so the forger's file names them)."""
        if isinstance(filename, bytes):
            filename = filename.decode("utf-8", "surrogateescape")
        name = name if isinstance(name, str) else None
        known = self.forged.get(filename)
        if known is not None and (known[2] is None or name in known[2]):
            return
        if known is None:
            if len(self.forged) < FORGED_CAP:
                line = None if event == "code.__new__" else where[1]
                self.forged[filename] = (where[0], line, None if name is None else {name})
        elif name is not None and len(known[2]) < FORGED_CAP:
            known[2].add(name)
        else:  # compile()'s module code and all it defines, or past the cap: any name
            self.forged[filename] = (known[0], known[1], None)
        if self.admit("code.forged"):
            self.emit("code.forged", "code", where,
                      {"filename": clip(filename), "name": clip(name) if name else None,
                       "by": FORGED_BY[event]})

    def misnamed_module(self, code):
        """A module the import system is running whose code names another file than the
        one it was loaded from: a sourceless .pyc keeps whatever file name it was compiled
        under (the stdlib's, `<frozen os>`). When the file it came from is the code under
        test's, that is a forgery: reported at the import, and its code is the job's."""
        try:
            frame = sys._getframe(3)  # importlib's exec(code, module.__dict__): hook, routine
        except ValueError:  # exec'd from C near the bottom of the stack: not an import
            return
        if not frame.f_code.co_filename.startswith("<frozen importlib"):
            return
        args = frame.f_locals.get("args")
        module = args[1] if isinstance(args, tuple) and len(args) > 1 else None
        origin = module.get("__file__") if isinstance(module, dict) else None
        if not isinstance(origin, str) or origin == code.co_filename or \
                self.classify(origin) not in UNDER_TEST:
            return
        outer = frame
        while outer is not None and outer.f_code.co_filename.startswith("<frozen "):
            outer = outer.f_back
        where = self.resolve(outer, None) if outer is not None and self.kind_of(
            outer.f_code) in UNDER_TEST else (self.display(origin), 0, [], None)
        names = sorted({c.co_name for c in nested_codes(code, self.nested)})[:FORGED_CAP]
        self.forgery("exec", code.co_filename, names[0], where)  # reported once
        known = self.forged.get(code.co_filename)
        if known is not None and known[2] is not None:
            known[2].update(names)

    def classify(self, filename):
        """STDLIB, GUEST, JOB, DEPENDENCY or PSEUDO (`<string>`: made by exec/compile) for
        a code object's filename (cached: one dict hit)."""
        kind = self.kinds.get(filename)
        if kind is None:
            kind = self._classify(filename)
            if len(self.kinds) < CACHE_CAP:
                self.kinds[filename] = kind
        return kind

    def _classify(self, filename):
        if filename.startswith("<frozen "):
            return STDLIB
        if filename.startswith("<") or not os.path.isabs(filename):
            # made by compile(): `<string>`, or whatever name it was handed ('r'); every
            # file the interpreter loads is named by its absolute path here (-I: no '')
            return PSEUDO
        if os.path.dirname(filename) == self.guest_dir:
            return GUEST
        if filename in self.written:
            return JOB  # code the package wrote itself, then ran
        packages = ("site-packages" + os.sep in filename or "dist-packages" + os.sep in filename)
        if filename.startswith(self.stdlib) and not packages:
            return STDLIB
        if self.dependencies is not None and filename in self.dependencies:
            return DEPENDENCY
        # Vetting, a file is a dependency's only by what installed it, never by where it
        # lies: a module the package wrote to /tmp or to a dir it named `site-packages`
        # and then ran is the package's own code.
        if self.roots is not None:  # pip's build: the package's build dirs are the roots
            if filename.startswith(self.roots):
                return JOB
            return DEPENDENCY if packages or filename.startswith(self.installed) or \
                in_process(os.path.basename(filename)) else JOB
        if self.dependencies is not None:  # the import phase: their RECORDs say which
            return DEPENDENCY if filename.startswith(self.installed) else JOB
        return DEPENDENCY if packages else JOB

    def locate(self, event, direct):
        """(file, line, via, through) of the job's code that caused the event, or None
        when the job did not.

        Whatever the import machinery does (reading, unmarshalling and running a module,
        and a stdlib module's own import-time work) is left out: the `import` event says it.
        `through` names the dependency the job's code called that did it (urllib3, the
        build backend), None when the job's code or the stdlib did.
        """
        try:
            frame = sys._getframe(2)
        except ValueError:  # raised from C with no Python caller (interpreter start-up)
            return None
        if direct:
            if event != "import" and self.frozen(frame.f_code, "<frozen importlib"):
                return None
            # importlib.import_module() is the import statement of code that names its
            # module at run time: its caller is the one that imported
            while frame is not None and (self.frozen(frame.f_code) or (
                    frame.f_code.co_filename.endswith(IMPORTLIB_ENTRY)
                    and self.classify(frame.f_code.co_filename) == STDLIB)):
                frame = frame.f_back
            if frame is None or self.kind_of(frame.f_code) not in UNDER_TEST:
                return None
            return self.resolve(frame, None)
        if event.startswith("os.environ."):
            return self.locate_environ(frame)
        through = outermost = None
        while frame is not None:
            filename = frame.f_code.co_filename
            if self.frozen(frame.f_code, "<frozen importlib"):
                if through is None:
                    return None
                # a dependency's own work while it is imported: the code under test that
                # imported it is where it came from
                frame = frame.f_back
                continue
            kind = self.kind_of(frame.f_code)
            if kind in UNDER_TEST:
                file, line, via, through = self.resolve(frame, through)
                if outermost is not None:  # the dependency's own line that did it
                    via = [*via, self.dependency_place(outermost)][:VIA_CAP]
                return (file, line, via, through)
            if kind == DEPENDENCY:
                if through is None:
                    through, outermost = self.dependency_name(filename), frame
            frame = frame.f_back
        scheduled = self.scheduled(through)
        if scheduled is not None:
            return scheduled
        if outermost is not None and self.dependencies is not None:
            # vetting: what a dependency did with no code of the package above it (a
            # thread, an atexit handler, a file misfiled as a dependency's) is still shown,
            # at the dependency's own line: a classification moves an event, never drops it
            return (clip(outermost.f_code.co_filename), outermost.f_lineno or 0, [], through)
        return None

    def scheduled(self, through):
        """Where the code under test handed the runtime what this thread is running now (a
        thread it started, an exit handler it registered: `Thread(target=open)` runs with
        no frame of its own on the stack), or None."""
        stack = self.origins.get(_thread.get_ident()) if self.origins else None
        if not stack:
            return None
        file, line, via, kind = stack[-1]
        return (file, line, [*via, "(%s)" % kind][:VIA_CAP], through)

    def origin_here(self, kind):
        """(file, line, via, kind): the innermost frame of the code under test calling
        the runtime's scheduler, or what the current thread was itself scheduled by."""
        try:
            frame = sys._getframe(2)
        except ValueError:  # called from C with no Python caller
            return None
        for _ in range(STACK_CAP):
            if frame is None:
                break
            if self.kind_of(frame.f_code) in UNDER_TEST:
                file, line, via, _through = self.resolve(frame, None)
                return (file, line, via, kind)
            frame = frame.f_back
        inherited = self.scheduled(None)
        return None if inherited is None else (*inherited[:3], kind)

    def running(self, origin, function, args, kwargs):
        """function(*args, **kwargs) with `origin` as what this thread runs for."""
        stack = self.origins.get(_thread.get_ident())
        if stack is None:
            if len(self.origins) >= ORIGINS_CAP:
                return function(*args, **kwargs)
            stack = self.origins[_thread.get_ident()] = []
        stack.append(origin)
        try:
            return function(*args, **kwargs)
        finally:
            stack.pop()
            if not stack:
                self.origins.pop(_thread.get_ident(), None)

    def dependency_place(self, frame):
        """file:line of a dependency's frame, named from the dir it is installed in (as
        the report names installed files): `urllib3/connection.py:205`."""
        filename = frame.f_code.co_filename
        if self.site_root and filename.startswith(self.site_root):
            filename = filename[len(self.site_root):]
        for marker in ("-packages" + os.sep, ".whl" + os.sep):
            if marker in filename:
                filename = filename.rsplit(marker, 1)[1]
        return clip("%s:%d" % (filename, frame.f_lineno or 0))

    def dependency_name(self, filename):
        if self.dependencies is not None:
            return self.dependencies.get(filename) or dependency_name(filename)
        return dependency_name(filename)

    def locate_environ(self, frame):
        """An environment read is the job's only when its own code asked (os.environ[...],
        .get, os.getenv, iterating it); the stdlib reading proxies or locales on its
        behalf, or a dependency reading its settings, is not."""
        while frame is not None and self.kind_of(frame.f_code) != PSEUDO and (
                self.classify(frame.f_code.co_filename) == GUEST
                or frame.f_code.co_filename.endswith(ENVIRON_HELPERS)):
            frame = frame.f_back
        if frame is not None and self.kind_of(frame.f_code) in UNDER_TEST:
            return self.resolve(frame, None)
        # no code but the stdlib's on the stack (a thread's or exit handler's machinery):
        # what the job scheduled, if it did; else the stdlib's own business
        outer = frame
        for _ in range(STACK_CAP):
            if outer is None:
                return self.scheduled(None)
            if self.kind_of(outer.f_code) in (JOB, PSEUDO, DEPENDENCY):
                return None
            outer = outer.f_back
        return None

    def resolve(self, frame, through):
        """(file, line, via, through) for a frame of the code under test.

        A pseudo-frame (`<string>`) is code someone exec'd: the frame that exec'd it, when it
        is the code under test too, is where it came from, and the pseudo-frames passed on
        the way are kept in `via`. Exec'd by anything else (setuptools running setup.py as
        `<string>`), the code is named by the `__file__` its globals carry when that is the
        code under test's: the innermost frame of that file's own code (its functions are
        constants of the exec'd module) gives the line; code it exec'd in turn is `via`."""
        chain = []
        while self.kind_of(frame.f_code) == PSEUDO:
            chain.append(frame)
            outer = frame.f_back
            if outer is None or self.kind_of(outer.f_code) not in UNDER_TEST:
                break
            frame = outer
        if chain and frame is chain[-1]:  # exec'd by something outside the code under test
            outer = frame.f_back
            if outer is not None and self.kind_of(outer.f_code) == GUEST:
                # the launcher ran it: the job's own `-c` code, which exec'd the rest
                return (clip(frame.f_code.co_filename), frame.f_lineno or 0,
                        pseudo_names(chain[:-1]), through)
            named = frame.f_globals.get("__file__")
            own = nested_codes(module_code(frame, self.modules_seen), self.nested) if isinstance(
                named, str) and self.classify(named) == JOB else ()
            for index, inner in enumerate(chain):
                if inner.f_code in own:
                    return (self.display(named), inner.f_lineno or 0,
                            pseudo_names(chain[:index]), through)
            forged = self.forged.get(chain[0].f_code.co_filename)
            if forged is not None and forged[1] is not None:  # the line that forged it
                return (forged[0], forged[1], pseudo_names(chain), through)
            return (forged[0] if forged else clip(chain[0].f_code.co_filename),
                    chain[0].f_lineno or 0, pseudo_names(chain[1:]), through)
        return (self.display(frame.f_code.co_filename), frame.f_lineno or 0,
                pseudo_names(chain), through)

    def display(self, filename):
        """A file of the code under test as the report shows it: relative to the build
        dir it was found in when the roots are known (pip's `pip-req-build-XXXX/setup.py`
        is `setup.py`), else as it is (the host makes it relative to the job's root)."""
        for root in self.roots or ():
            if filename.startswith(root):
                rest = filename[len(root):]
                if not root.endswith(os.sep):
                    rest = rest.partition(os.sep)[2]
                return clip(rest)
        return clip(filename)

    def hook(self, event, args):
        category = WATCH.get(event)
        if category is None or self.done:
            return
        try:
            if category == "setup":
                self.setup(event, args)
                return
            if self.routine(event, args):
                return
            where = self.locate(event, category in DIRECT)
            if where is None or (where[3] and category == "file" and self.churn(args)):
                return
            if event in FORGING:
                if self.foreign(args[1]):
                    self.forgery(event, args[1], args[2] if event == "code.__new__" else None,
                                 where)
                if event == "code.__new__":
                    return
            elif event == "marshal.loads":
                self.unmarshalled(args[0], where)
            elif category == "file" and not where[3]:
                self.wrote(event, args)
            if self.admit(event):
                self.emit(event, category, where, summarise(event, args))
        except Exception as exc:
            key = "<hook error: %s %s>" % (type(exc).__name__, clip(str(exc))[:80])
            self.dropped[key] = self.dropped.get(key, 0) + 1

    def wrote(self, event, args):
        """Remember a file the code under test wrote, created, moved or copied (capped):
        code later loaded from it is the package's own, wherever it lies (a module written
        into the build env's site-packages and imported is not setuptools')."""
        if event == "open":
            mode, flags = (*args[1:], None, None)[:2]
            if not (isinstance(mode, str) and any(c in mode for c in "wax+")) and not (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return
            paths = args[:1]
        elif event in WRITTEN_TARGET:
            paths = args[1:2]
        else:
            return
        for path in paths:
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if isinstance(path, str) and len(self.written) < CACHE_CAP:
                path = os.path.abspath(path)
                self.written.add(path)
                self.kinds.pop(path, None)

    def churn(self, args):
        path = args[0] if args else None
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        return bool(self.quiet) and isinstance(path, str) and (
            not os.path.isabs(path) or path.startswith(self.quiet))

    def admit(self, event):
        """Count an observed event; False when its kind's or the total budget is spent."""
        self.observed += 1
        count = self.per_kind.get(event, 0) + 1
        self.per_kind[event] = count
        if count > PER_KIND or self.sent >= TOTAL or self.bytes >= BYTES:
            self.dropped[event] = self.dropped.get(event, 0) + 1
            return False
        return True

    def setup(self, event, args):
        if event == "socket.__new__" and not self.sockets_wrapped:
            self.sockets_wrapped = True
            wrap_sockets()
        elif event == "detain.relay" and args and isinstance(args[0], dict):
            self.relay(args[0])
        elif event == "detain.guest" and not self.guest_claimed and args:
            # detain's own job script (package_phase.py) says so as its first act, before
            # any package code runs; only the first claim counts.
            self.guest_claimed = True
            self.kinds[str(args[0])] = GUEST
        elif event == "detain.dependencies" and self.dependencies is None and args and \
                isinstance(args[0], dict):
            self.dependencies = {str(k): clip(v) for k, v in args[0].items()}
            if len(args) > 1 and isinstance(args[1], str):
                self.site_root = args[1].rstrip(os.sep) + os.sep
        elif event == "detain.decoys" and args:
            self.claim_decoys(args[0])

    def relay(self, record):
        """A child process's record (written by its own hook), renumbered into this
        channel under this hook's budgets. Its fields were written by the package's own
        process: they are re-checked here and again on the host."""
        if record.get("type") == "done":
            for key, value in list((record.get("dropped") or {}).items())[:50]:
                if isinstance(value, int):
                    name = "child " + clip(key)
                    self.dropped[name] = self.dropped.get(name, 0) + value
            return
        event, category = record.get("event"), record.get("category")
        if (record.get("type") != "event" or category == "setup"
                or WATCH.get(event) != category or not self.admit(event)):
            return
        mono = record.get("mono")
        via = record.get("via")
        through = record.get("through")
        where = (clip(record.get("file")), record.get("line") if isinstance(
            record.get("line"), int) else 0, [clip(v) for v in via[:VIA_CAP]]
            if isinstance(via, list) else [], clip(through) if through else None)
        args = record.get("args") if isinstance(record.get("args"), dict) else {}
        pid = record.get("pid")
        self.emit(event, category, where, args, mono if isinstance(mono, float) else None,
                  pid if isinstance(pid, int) else None)

    def routine(self, event, args):
        """Cheap early exits, before any frame is looked at: running stdlib module code and
        reading stdlib files are what every import does, never what a report is about."""
        if event == "os.environ.get":
            return not self.watched(args[0])
        if event == "exec":
            if not hasattr(args[0], "co_filename") or self.kind_of(args[0]) in UNDER_TEST:
                return False
            self.misnamed_module(args[0])
            return self.kind_of(args[0]) == STDLIB
        if event == "open" and len(args) > 1 and args[1] == "r":
            return isinstance(args[0], str) and self.classify(args[0]) == STDLIB
        if event == "code.__new__":  # legit code (types.coroutine) keeps its own name
            return not self.foreign(args[1])
        return False

    def emit(self, event, category, where, summary, mono=None, pid=None):
        if event == "import" and len(self.modules) < MODULES_CAP:
            self.modules.append(str(summary.get("module")))
        now = time.monotonic()
        file, line, via, through = where
        record = self.numbered({"type": "event",
                                "t_us": int(((mono or now) - self.started) * 1e6),
                                "event": event, "category": category, "file": file,
                                "line": line, "args": summary})
        if via:
            record["via"] = via
        if through:
            record["through"] = through
        if pid is not None:
            record["pid"] = pid
        elif self.stream is not None:
            record["pid"] = os.getpid()
        if self.roots is not None:  # a child's record, for the relay
            record.update(mono=now, pid=os.getpid())
        self.sent += 1
        data = self.encode(record)
        if len(data) > RECORD_CAP:
            record["args"] = {"truncated": True}
            data = self.encode(record)
        self.bytes += len(data)
        self.write(data)

    def numbered(self, record):
        """`record` with this process's next sequence number (and its label, forked)."""
        record["seq"] = next(self.seq)
        if self.stream is not None:
            record["stream"] = self.stream
        return record

    def before_fork(self):
        """In the parent, about to fork: announce the child's numbering in this one's
        sequence (the host accepts a forked process's records only so announced)."""
        if not self.done:
            record = self.numbered({"type": "fork"})
            self.forking = record["seq"]
            self.write(self.encode(record))

    def after_fork(self):
        """In the child: number its own records from 1 under the announced label, so the
        parent's and the child's numbers never collide; its counts start afresh too."""
        if self.done or self.forking is None:
            return
        label = str(self.forking)
        self.stream = label if self.stream is None else "%s/%s" % (self.stream, label)
        self.seq = itertools.count(1)
        self.sent = self.observed = 0
        self.dropped = {}
        self.modules = []

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
        self.write(self.encode(self.numbered({"type": "done", "sent": self.sent,
                                              "observed": self.observed,
                                              "dropped": self.dropped, "modules": modules})))


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
    if event.startswith("gc.") or event == "cpython.PyInterpreterState_New":
        # never the objects: their repr would carry what they hold (the environment)
        return {"objects": len(args[0]) if args and isinstance(args[0], tuple) else None}
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
    if event == "os.environ.get":
        return {"name": clip(args[0])}
    if event == "os.environ.iter":
        return {"variables": args[0] if isinstance(args[0], int) else None}
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


def wrap_sockets():
    """Make connect()/connect_ex()/sendto() to a host *name* raise the lookup's audit event
    first: CPython resolves such an address in C before `socket.connect` is raised, so
    without this a lookup that fails (always, without a network) left no event at all."""
    socket = sys.modules.get("socket")
    cls = getattr(socket, "socket", None)
    if cls is None:
        return

    def named(sock, address):
        if (isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str)
                and address[0] and not is_ip_literal(address[0])
                and sock.family in (socket.AF_INET, socket.AF_INET6)):
            sys.audit("socket.getaddrinfo", address[0], address[1], sock.family, sock.type,
                      0, 0)

    def wrap(name, address_of):
        real = getattr(cls, name)

        def wrapper(self, *args):
            named(self, address_of(args))
            return real(self, *args)
        wrapper.__name__ = wrapper.__qualname__ = name
        wrapper.__doc__ = real.__doc__
        setattr(cls, name, wrapper)

    wrap("connect", lambda args: args[0] if args else None)
    wrap("connect_ex", lambda args: args[0] if args else None)
    # sendto(data, address) or sendto(data, flags, address)
    wrap("sendto", lambda args: args[-1] if len(args) in (2, 3) else None)


ENCODING = sys.getfilesystemencoding()  # os.environ's own, for the names it encodes


def variable_name(key):
    return key.decode(ENCODING, "surrogateescape") if isinstance(key, bytes) else key


class AuditedEnviron(dict):
    """The environment's raw data (the one dict behind os.environ, os.environb and
    posix.environ): reading a variable raises `os.environ.get` with its name, never its
    value (the hook keeps credential-looking and decoy names), and anything that hands
    out the whole environment raises `os.environ.iter`. os.environ, os.getenv, os.environb
    and os.getenvb read through it, as does code that reaches for the dict itself.

    What a dict subclass cannot see (CPython 3.11), so neither can this: the base class's
    own methods called on it (`dict.items(posix.environ)`, `dict.__getitem__(d, k)`,
    `dict.copy(d)`), C code reading the dict directly (`==`, gc.get_referents), membership
    tests (`in` says a variable exists, not what it holds), the C environment itself
    (ctypes' getenv, a native event; /proc/self/environ, a file read). dict(d), {**d},
    {}.update(d), json.dumps(d), copy and pickle all go through keys()/items() here."""


def reading(method):
    """`method` of dict, raising `os.environ.get` with the variable's name first."""
    def read(self, key, *args):
        sys.audit("os.environ.get", variable_name(key))
        return method(self, key, *args)
    read.__name__ = read.__qualname__ = method.__name__
    return read


def walking(method):
    """`method` of dict, raising `os.environ.iter` (how many variables) first."""
    def walk(self, *args):
        sys.audit("os.environ.iter", len(self))
        return method(self, *args)
    walk.__name__ = walk.__qualname__ = method.__name__
    return walk


for _name in ("__getitem__", "get", "pop", "setdefault"):
    setattr(AuditedEnviron, _name, reading(getattr(dict, _name)))
for _name in ("__iter__", "__reversed__", "keys", "values", "items", "copy", "popitem",
              "__or__", "__ror__", "__repr__"):
    setattr(AuditedEnviron, _name, walking(getattr(dict, _name)))


def record_environ():
    """Put AuditedEnviron in place of the environment's dict, wherever it is held: the
    same data, written through as before (os.environ's putenv), only reads recorded."""
    data = os.environ._data
    if type(data) is not dict:
        return
    audited = AuditedEnviron(data)
    os.environ._data = audited
    if getattr(os, "environb", None) is not None and os.environb._data is data:
        os.environb._data = audited
    native = sys.modules.get(os.name)  # posix: os.environ's source at start-up
    if getattr(native, "environ", None) is data:
        native.environ = audited


def remember_origins(auditor):
    """Make the runtime's schedulers remember which line of the code under test handed them
    work: a new thread (`_thread.start_new_thread`, which threading uses) and an exit
    handler (`atexit.register`) then run with that line as their origin, so what they do
    with no frame of the job on the stack (`Thread(target=open, ...)`) is still located."""
    start_new_thread, register, unregister = (_thread.start_new_thread, atexit.register,
                                              atexit.unregister)
    wrapped = {}  # id(handler) -> the runners registered for it, for unregister

    def start_thread(function, args, kwargs=None):
        origin = auditor.origin_here("a thread it started")
        if origin is None or not callable(function):
            return start_new_thread(function, args, *(() if kwargs is None else (kwargs,)))
        return start_new_thread(auditor.running, (origin, function, args, kwargs or {}))

    def register_exit(function, *args, **kwargs):
        origin = auditor.origin_here("an exit handler it registered")
        if origin is None or not callable(function):
            return register(function, *args, **kwargs)
        runner = functools.partial(auditor.running, origin, function, args, kwargs)
        if len(wrapped) < ORIGINS_CAP:
            wrapped.setdefault(id(function), (function, []))[1].append(runner)
        register(runner)
        return function

    def unregister_exit(function):
        unregister(function)
        for runner in wrapped.pop(id(function), (None, ()))[1]:
            unregister(runner)

    _thread.start_new_thread = _thread.start_new = start_thread
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._start_new_thread = start_thread
    atexit.register, atexit.unregister = register_exit, unregister_exit


def start(auditor):
    record_environ()
    sys.addaudithook(auditor.hook)
    atexit.register(auditor.finish)
    remember_origins(auditor)
    os.register_at_fork(before=auditor.before_fork, after_in_child=auditor.after_fork)
    return auditor


def install(fd, to_json, kind, target):
    """Start auditing on channel `fd`, with the launcher's encoder.

    The `audit` record, sent before the job runs (so not forgeable by it), names the job's
    root: the host reports paths under it relative to it, like the static scan does.
    """
    job_root = os.path.dirname(os.path.abspath(target)) if kind == "script" else os.getcwd()
    auditor = Auditor(fd, to_json, job_root)
    auditor.write(auditor.encode({"type": "audit", "job_root": job_root,
                                  "per_kind": PER_KIND, "total": TOTAL}))
    return start(auditor)


def install_child(log_dir, roots, quiet=(), decoys=()):
    """Audit a child Python (pip, its build backend, setup.py) into LOG_DIR/PID.jsonl, for
    the parent phase to relay; only code under `roots` (path prefixes) is the package's, a
    dependency's file work under `quiet` (prefixes) is the build's own, and `decoys` are the
    planted variables (written into its boot file: no environment the package passes on
    can drop them)."""
    import json

    try:
        fd = os.open(os.path.join(log_dir, "%d.jsonl" % os.getpid()),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    auditor = Auditor(fd, json.dumps, os.getcwd(), roots, quiet)
    auditor.claim_decoys(tuple(decoys))
    return start(auditor)
