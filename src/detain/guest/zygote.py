"""A zygote: the job's interpreter, started once per warm Sandbox, forking every run.

Starting an interpreter costs more than most jobs (tens of ms); forking one that is already
up costs about one. The zygote loads what every run needs (the launcher, the audit hook,
runpy, the compiler) and then only forks: it never reads a job, never runs job code, and
holds nothing of any run but the fds it passes on. Each fork confines *itself* before it
reads its job, with confinement of its own, exactly as the sandbox tool would:

  * mode `ns` (the bwrap backend, as root): the zygote first builds the sandbox's root
    (read-only binds of /usr, the interpreter, the guest dir; /etc files; /dev) in a mount
    namespace of its own and pivots into it. A run is cloned (CLONE_PARENT, so it is
    detain's child) into new pid, mount, network, IPC and UTS namespaces; its pid 1 joins
    the run's cgroup and a cgroup namespace, mounts its own /proc, /tmp, /dev/shm, /dev/pts
    and size-capped scratch, binds the run's job dir read-only, drops the state dir, names
    its host, brings loopback up, and forks the job as pid 2. The job drops to the run's
    fresh uid, enters a new user namespace (uid 1000 inside), drops every capability and
    the bounding set, sets no_new_privs and loads the seccomp filter.
  * mode `landlock`: a run is cloned (CLONE_PARENT) into the run's cgroup; as root it
    mounts the run's size-capped scratch in a mount namespace of its own. It is the run's
    reaper (a child subreaper that kills every descendant when the job's main process
    ends, at the wall clock and when detain dies) and forks the job. The job drops to
    the run's uid (as root), sets no_new_privs, enforces a fresh Landlock ruleset (built
    here, for this run's scratch and job dir) and loads the seccomp filter.

The host speaks to the zygote over a SOCK_SEQPACKET socket: one configuration message,
then `fork` requests (fields and the run's fds), answered `ok PID` or `error TEXT`, and
`go PID SECONDS` / `done PID`, with which the zygote keeps the run's wall clock the way the
warden does (host/warden.py): a stopped detain cannot stretch a run. When detain's end of
the socket closes, the zygote kills every run it still watches and exits.

Only `os`, `sys`, `_socket`, `select`, `ctypes` and `fcntl` are loaded beyond what the
launcher loads; a run sees them in sys.modules, and nothing else of the zygote.
"""

import ctypes
import fcntl
import os
import select
import sys

CLONE_PARENT, CLONE_NEWNS, CLONE_NEWCGROUP = 0x8000, 0x20000, 0x02000000
CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER = 0x04000000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
CLONE_INTO_CGROUP = 0x200000000
NR_CLONE3 = 435  # the same number on every architecture
SIGCHLD, SIGKILL = 17, 9
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 1, 4, 38, 24
PR_SET_CHILD_SUBREAPER, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 36, 22, 2
SYSCALLS = {"x86_64": {"pivot_root": 155, "capset": 126, "ll_create": 444,
                       "ll_add": 445, "ll_restrict": 446},
            "aarch64": {"pivot_root": 41, "capset": 91, "ll_create": 444,
                        "ll_add": 445, "ll_restrict": 446}}
LIST, ITEM = "\x1e", "\x1f"  # separators of list fields and of an item's parts
LABEL_ROOM = 128  # bytes of blank argument the host leaves for a run's label (show_label)
JOB_FDS = 5  # a run's fds after set-up: stdin, stdout, stderr, channel (3), job (4)
PROC_COVERED = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
RECENT = 8  # runs whose pid namespace the zygote holds a while

libc = ctypes.CDLL(None, use_errno=True)
_raw = ctypes.PyDLL(None, use_errno=True)  # holds the GIL across clone(), as os.fork does
NR = SYSCALLS.get(os.uname().machine, {})


def check(ret, what):
    if ret < 0 if isinstance(ret, int) else ret:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))
    return ret


def mount(source, target, fstype, flags, data=None):
    source, fstype, data = (None if s is None else s.encode() for s in (source, fstype, data))
    check(libc.mount(source, target.encode(), fstype, flags, data), "mount " + target)


def bind(source, target, read_only):
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def write_file(path, text, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def clone(flags, cgroup=None):
    """fork(), with namespace flags and CLONE_PARENT: the child is detain's, not ours;
    with a `cgroup` dir fd, born in that group (clone3's CLONE_INTO_CGROUP)."""
    api = ctypes.pythonapi
    args = (ctypes.c_uint64 * 11)()  # struct clone_args, CLONE_ARGS_SIZE_VER2
    # With CLONE_PARENT the exit signal is ours to our parent (SIGCHLD), and must be 0 here.
    args[0], args[4] = flags, 0 if flags & CLONE_PARENT else SIGCHLD
    if cgroup is not None:
        args[0] |= CLONE_INTO_CGROUP
        args[10] = cgroup
    api.PyOS_BeforeFork()
    pid = _raw.syscall(NR_CLONE3, args, ctypes.sizeof(args))
    if pid == 0:
        api.PyOS_AfterFork_Child()
    else:
        api.PyOS_AfterFork_Parent()
    return check(pid, "clone")


def fields(message):
    return message.decode("utf-8", "surrogateescape").split("\0")


def items(value):
    return [item.split(ITEM) for item in value.split(LIST) if item]


# -- the template root (mode ns) ---------------------------------------------------------

def build_root(config):
    """Make the sandbox's root in our own mount namespace and move into it."""
    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = config["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for op in items(config["layout"]):
        kind, path = op[0], root + op[-1]
        if kind == "dir":
            os.makedirs(path, 0o755, exist_ok=True)
        elif kind == "symlink":
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            os.symlink(op[1], path)
        elif kind == "file":
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            write_file(path, op[1])
        elif kind == "devtmpfs":
            os.makedirs(path, 0o755, exist_ok=True)
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
        else:  # ro / rw: a bind of a host path
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            if os.path.isdir(op[1]):
                os.makedirs(path, 0o755, exist_ok=True)
            elif not os.path.exists(path):
                write_file(path, "")
            bind(op[1], path, kind == "ro")
    os.chdir(root)
    check(libc.syscall(NR["pivot_root"], b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    for tmpfs in ("/dev", "/"):
        mount(None, tmpfs, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID
              | (MS_NOEXEC if tmpfs == "/dev" else 0))


def ns_init(config, request, uid):
    """pid 1 of a run (mode ns): the run's own mounts and host name, then the job as pid 2;
    exits with the job's status (128+N for a signal, as bwrap reports it)."""
    size = request["disk"]
    for path, mode in (("/tmp", "1777"), ("/dev/shm", "1777")):
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=%s,size=%s" % (mode, size))
    owner = ",uid=%d,gid=%d" % (uid, uid) if uid is not None else ""
    mount("tmpfs", config["scratch"], "tmpfs", MS_NOSUID | MS_NODEV,
          "mode=0700,size=%s%s" % (size, owner))
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in PROC_COVERED:  # read-only over themselves, as bwrap's --proc leaves them
        if os.path.exists(path):
            bind(path, path, True)
    for path in config["masked"].split(LIST):
        if path and os.path.exists(path):
            bind("/dev/null", path, True)
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=620")
    bind("/.state/" + os.path.basename(request["run"]) + "/job", config["job"], True)
    check(libc.umount2(b"/.state", MNT_DETACH), "umount state")
    name = b"detain"
    check(libc.sethostname(name, len(name)), "sethostname")
    loopback_up()
    job = os.fork()
    if job == 0:
        return
    for fd in range(JOB_FDS):
        os.close(fd)
    reap_until(job, lambda status: os._exit(
        128 + os.WTERMSIG(status) if os.WIFSIGNALED(status)
        else os.waitstatus_to_exitcode(status)))


def loopback_up():
    """`ip link set lo up` (the kernel then gives it 127.0.0.1), as bwrap does."""
    import _socket

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = b"lo".ljust(16, b"\0")
        flags = int.from_bytes(fcntl.ioctl(sock.fileno(), 0x8913,  # SIOCGIFFLAGS
                                           request + bytes(24))[16:18], "little")
        fcntl.ioctl(sock.fileno(), 0x8914,  # SIOCSIFFLAGS
                    request + (flags | 1).to_bytes(2, "little") + bytes(22))
    finally:
        sock.close()


def reap_until(child, finish):
    """Reap every process that ends up ours; call `finish(status)` once `child` ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(255)
        if pid == child:
            finish(status)


def enter_user_namespace(uid):
    """The job's own user namespace, uid/gid 1000 inside for the run's uid, and then no
    capability at all in it (nor in its bounding set)."""
    check(libc.unshare(CLONE_NEWUSER), "unshare user")
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # the uid change cleared it,
    # and /proc/self's files are then root's: the maps below could not be written
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", "1000 %d 1" % uid)
    write_file("/proc/self/gid_map", "1000 %d 1" % uid)
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()
    check(libc.syscall(NR["capset"], header, data), "capset")


def reveal(plan):
    """Landlock as root: dirs the run's uid cannot reach (an interpreter under /root) are
    made reachable in our own mount namespace, which every run inherits: an empty tmpfs
    over the closed ancestor, with only those dirs bound back in it."""
    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for ancestor, *paths in plan:
        held = [os.open(path, os.O_PATH | os.O_CLOEXEC) for path in paths]
        mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for index, path in enumerate(paths):
            os.makedirs(path, 0o755, exist_ok=True)
            bind("/proc/self/fd/%d" % held[index], path, True)
            os.close(held[index])


# -- landlock ------------------------------------------------------------------------------

def landlock(config, request):
    """A fresh Landlock domain for this run: the zygote's rules plus its scratch and job."""
    handled = [int(v) for v in config["ll_handled"].split(",")]
    size = 8 * (3 if handled[2] else 2 if handled[1] else 1)
    attr = (ctypes.c_uint64 * 3)(*handled)
    ruleset = check(libc.syscall(NR["ll_create"], attr, size, 0), "landlock ruleset")
    rules = items(config["ll_rules"])
    rules += [[request["run"] + "/scratch", config["ll_scratch"]],
              [request["run"] + "/job", config["ll_job"]]]
    rules += [[path, config["ll_proc_self"]] for path in ("/proc/self/status",
                                                          "/proc/self/cgroup")]
    beneath = (ctypes.c_uint8 * 12)()
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        allowed = int(rights)
        if not os.path.isdir(path):
            allowed &= int(config["ll_file_rights"])
        ctypes.memmove(beneath, allowed.to_bytes(8, "little") + fd.to_bytes(4, "little"), 12)
        try:
            check(libc.syscall(NR["ll_add"], ruleset, 1, beneath, 0), "landlock rule " + path)
        finally:
            os.close(fd)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.syscall(NR["ll_restrict"], ruleset, 0), "landlock restrict")
    os.close(ruleset)


def landlock_reaper(config, request, uid):
    """Mode landlock: as root, the run's own scratch tmpfs; then the run's reaper, always:
    the job as its child, every descendant killed when the job's main process ends, when
    the zygote ends the run (SIGTERM at the wall clock) and when detain dies (SIGTERM as
    the parent-death signal). A cgroup alone did not do: a `setsid()` daemon of the job's
    outlived a killed detain (nothing was left to kill the cgroup), and a stopped detain's
    wall clock ended only the job's main process."""
    import signal

    if uid is not None:
        check(libc.unshare(CLONE_NEWNS), "unshare")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("tmpfs", request["run"] + "/scratch", "tmpfs", MS_NOSUID | MS_NODEV,
              "mode=0700,size=%s,uid=%d,gid=%d" % (request["disk"], uid, uid))
    check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
    job = os.fork()
    if job == 0:
        return

    def end_all(_signum=None, _frame=None):
        kill_descendants()
        os._exit(137)

    signal.signal(signal.SIGTERM, end_all)
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0), "parent-death signal")
    if os.getppid() == 1:  # detain died before the signal was set
        end_all()
    for fd in range(JOB_FDS):
        os.close(fd)

    def finish(status):
        kill_descendants()
        if os.WIFSIGNALED(status):
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no core of ours
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status))

    reap_until(job, finish)


def kill_descendants():
    """SIGKILL every process below us and reap it, until none is left."""
    while True:
        pending, found = [os.getpid()], []
        while pending:
            pid = pending.pop()
            try:
                tasks = os.listdir("/proc/%d/task" % pid)
            except OSError:
                continue
            for task in tasks:
                try:
                    with open("/proc/%d/task/%s/children" % (pid, task), "rb") as handle:
                        children = [int(p) for p in handle.read().split()]
                except (OSError, ValueError):
                    continue
                found += children
                pending += children
        for pid in found:
            try:
                os.kill(pid, SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return


# -- a run ---------------------------------------------------------------------------------

def start_run(zygote, request, fds):
    """In the cloned child: confine this run, then return to run the launcher (the job)."""
    config = zygote.config
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # detain's thread that asked for us
    os.setsid()
    for fd in fds[JOB_FDS:] if request["cgroup"] == "procs" else ():
        os.write(fd, b"0")  # join the run's cgroup: writing 0 moves the writer itself
    high = [fcntl_dup(fd) for fd in fds[:JOB_FDS]]
    for target, fd in enumerate(high):
        os.dup2(fd, target)  # dup2 clears close-on-exec, and nothing here execs anyway
    os.closerange(JOB_FDS, 1 << 16)  # nothing of the zygote's (its socket, other runs)
    uid = int(request["uid"]) if request["uid"] else None
    if config["mode"] == "ns":
        check(libc.unshare(CLONE_NEWCGROUP), "unshare cgroup")
        ns_init(config, request, uid)
        os.chdir(config["scratch"])
    else:
        landlock_reaper(config, request, uid)
        os.chdir(request["run"] + "/scratch")
    if request["label"]:  # while /proc/self is ours to read (mounted; before Landlock)
        show_label(request["label"])
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if config["mode"] == "ns":
        enter_user_namespace(uid)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    else:
        landlock(config, request)
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # the run's pid 1 or reaper
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, zygote.seccomp, 0, 0), "seccomp")
    sys.argv = [zygote.launcher.__file__, "--job-from", "4", "--ready", "3"]
    if request["label"]:
        sys.argv += ["--label", request["label"]]


def show_label(label):
    """Put `label` in this process's command line as the host's `ps` shows it (the
    launcher's --label; the selftest finds a job's processes by it), over the room the
    host left for it at the end of the zygote's arguments, as setproctitle does."""
    with open("/proc/self/stat", "rb") as handle:
        stat = handle.read().rpartition(b")")[2].split()
    end = int(stat[46])  # arg_end (field 49)
    data = (" --label " + label).encode("utf-8", "surrogateescape")[:LABEL_ROOM - 1]
    ctypes.memmove(end - LABEL_ROOM, data.ljust(LABEL_ROOM - 1, b" ") + b"\0", LABEL_ROOM)


def fcntl_dup(fd):
    """A copy of `fd` above the numbers the run's fds are moved to."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 2 * JOB_FDS)


class Zygote:
    def __init__(self, control):
        import _socket

        self.sock = _socket.socket(fileno=control)
        self.config = dict(item.split("=", 1) for item in fields(self.sock.recv(1 << 20))
                           if item)
        with open(self.config["seccomp"], "rb") as handle:
            program = handle.read()
        self._bpf = ctypes.create_string_buffer(program, len(program))
        prog = (ctypes.c_uint64 * 2)(len(program) // 8, ctypes.addressof(self._bpf))
        self.seccomp = prog
        if self.config["mode"] == "ns":
            build_root(self.config)
        elif self.config.get("reveal"):
            reveal(items(self.config["reveal"]))
        self.launcher = load(self.config["launcher"], "detain_launcher")
        self.launcher.sibling("audit")
        import runpy  # noqa: F401  (scripts and modules run through it)

        compile("pass", "<warm-up>", "exec")
        import gc

        gc.freeze()  # what is here now is never collected, so a run's GC never touches it
        self.watched = {}  # pid -> [pidfd, deadline or None]
        # The last runs' pid namespaces, held so the kernel gives the next runs other ids
        # (it reuses the lowest free one): logs and `ps` can tell consecutive runs apart.
        self.recent = []

    def serve(self):
        """Answer requests until detain goes away; returns in a forked run only."""
        import time

        poll = select.poll()
        poll.register(self.sock.fileno(), select.POLLIN)
        while True:
            now = time.monotonic()
            deadlines = [d for _, d in self.watched.values() if d is not None]
            timeout = None if not deadlines else max(0, int((min(deadlines) - now) * 1000) + 1)
            for pid, (_, deadline) in list(self.watched.items()):
                if deadline is not None and deadline <= now:
                    self.end(pid)
            if not poll.poll(timeout):
                continue
            message, fds = self.receive()
            if message is None:
                for pid in list(self.watched):
                    self.end(pid)
                os._exit(0)
            word, *args = fields(message)
            if word == "fork":
                request = {"uid": args[0], "run": args[1], "disk": args[2], "label": args[3],
                           "cgroup": args[4]}
                if self.fork(request, fds):
                    return
            elif word == "go" and int(args[0]) in self.watched:
                self.watched[int(args[0])][1] = time.monotonic() + float(args[1])
            elif word == "done" and int(args[0]) in self.watched:
                os.close(self.watched.pop(int(args[0]))[0])

    def receive(self):
        data, ancillary, _, _ = self.sock.recvmsg(1 << 16, 4096)
        if not data:
            return None, []
        fds = []
        for level, kind, payload in ancillary:
            if level == 1 and kind == 1:  # SOL_SOCKET, SCM_RIGHTS
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                        for i in range(0, usable, 4)]
        return data, fds

    def fork(self, request, fds):
        """Clone the run; True in the run itself (it goes on to the job)."""
        flags = CLONE_PARENT
        if self.config["mode"] == "ns":
            flags |= CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
        into = fds[JOB_FDS] if request["cgroup"] == "into" and len(fds) > JOB_FDS else None
        try:
            pid = clone(flags, into)
        except OSError as exc:
            self.reply("error " + str(exc), fds)
            return False
        if pid == 0:
            self.sock.close()
            for pidfd, _ in self.watched.values():
                os.close(pidfd)
            self.watched.clear()
            for fd in self.recent:
                os.close(fd)
            try:
                start_run(self, request, fds)
            except BaseException as exc:
                os.write(2, ("detain: could not confine the sandbox: %s\n" % exc).encode())
                os._exit(126)
            return True
        try:
            self.watched[pid] = [os.pidfd_open(pid), None]
            if self.config["mode"] == "ns":  # PIDFD_GET_PID_NAMESPACE (Linux 6.11)
                self.recent.append(fcntl.ioctl(self.watched[pid][0], 0xFF05))
        except OSError:
            pass  # already gone: the host reaps it and reports how it ended
        while len(self.recent) > RECENT:
            os.close(self.recent.pop(0))
        self.reply("ok %d" % pid, fds)
        return False

    def reply(self, text, fds):
        for fd in fds:
            os.close(fd)
        self.sock.send(text.encode())

    def end(self, pid):
        """The run's wall clock, or detain gone: a namespace's pid 1 takes everything with
        it when killed; a landlock run's reaper is asked (SIGTERM) to end every process of
        the run first."""
        pidfd, _ = self.watched.pop(pid)
        try:
            import signal

            signal.pidfd_send_signal(pidfd, SIGKILL if self.config["mode"] == "ns"
                                     else signal.SIGTERM)
        except OSError:
            pass
        os.close(pidfd)


def load(path, name):
    """A module from its file, through the import system's frozen core (launcher.sibling)."""
    bootstrap = sys.modules["_frozen_importlib"]
    external = sys.modules["_frozen_importlib_external"]
    spec = external.spec_from_file_location(name, path)
    module = bootstrap.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    zygote = Zygote(int(sys.argv[1]))
    zygote.serve()
    launcher = zygote.launcher
    del zygote
    try:
        launcher.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    quick_exit(code)


def quick_exit(code):
    """End the run as the interpreter would, without tearing down the zygote's heap.

    What a program can see of an exit happens: non-daemon threads are waited for, atexit
    handlers run, stdout and stderr are flushed, the status is SystemExit's. The job's
    own namespace is already gone (the launcher's frames returned). What is skipped is
    the interpreter's teardown of every module and object, which in a forked process
    writes to (so copies) every page the zygote left it, tens of ms for nothing."""
    threading = sys.modules.get("threading")
    try:
        if threading is not None:
            threading._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        sys.excepthook(*sys.exc_info())
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(str(code) + "\n")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 120  # as Python exits when flushing stdout fails
    os._exit(code & 0xFF)


if __name__ == "__main__":
    main()
