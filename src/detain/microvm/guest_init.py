"""PID 1 of detain's micro-VM: prepares the guest, waits for one job, runs it, powers off.

Stdlib only: it runs inside the guest under the image's interpreter, as root, and is the
only guest code detain trusts. The VM is booted once per (image, RAM, interpreter flags)
and saved while this script blocks reading the job port, so everything before that read is
shared by every run and everything after it happens in a fresh restored copy, exactly once.
Before the save it reads a boot message (the launcher's command line, uid, seccomp filter,
and in a VM saved for --trace the outside tracer, started first: microvm/trace.py) and
starts the job's process ahead of time: already in the job cgroup, as the unprivileged
uid, with no_new_privs and the seccomp filter, its interpreter up and blocked reading its
job from a pipe (`launcher.py --job-from`), so a run does not pay the interpreter's start-up
under an emulated CPU. After the restore:
  1. fresh randomness (the saved CRNG state is the same in every copy) and the host's clock;
  2. per-run sizes for the tmpfs mounts (/scratch with the disk cap, /tmp, /dev/shm), the
     job's script, read-only copies of the --mount inputs, the root made read-only, and
     the job cgroup's memory and process limits;
  3. the job message to the waiting launcher, which applies the job's rlimits and runs it,
     stdout/stderr/records going straight to their own virtio ports;
  4. once the job and everything it started have ended: the --copy-out paths as a capped
     tar on their own port, the last of the tracer's records (forwarded as they come
     since the restore, capped) on theirs, then a status record on a root-only port (exit
     status, guest-kernel OOM kills, CPU, RSS).
The host treats all of it as hostile anyway; the status port is only *more* trustworthy
than the job's own ports because the job cannot open it.
"""

import ctypes
import fcntl
import glob
import json
import os
import struct
import sys
import threading
import time

# Port numbers, agreed with detain.microvm.machine.
PORT_JOB, PORT_STDOUT, PORT_STDERR, PORT_RECORDS, PORT_STATUS, PORT_COPYOUT = 1, 2, 3, 4, 5, 6
PORT_TRACE = 7
CGROUP = "/sys/fs/cgroup/job"
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MNT_DETACH = 2
INPUTS = "/.detain-inputs"  # --mount contents, unpacked here and bound to their paths
# tmpfs mounts made at boot (the waiting job's cwd is one) and sized per run.
RUN_MOUNTS = (("/scratch", MS_NOSUID | MS_NODEV, "mode=0700,uid={uid},gid={uid}"),
              ("/tmp", MS_NOSUID | MS_NODEV, "mode=1777"),
              ("/dev/shm", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777"))
JOB_DIR = "/detain/job"
BOOT_ENV = {"LANG": "C.UTF-8"}  # only what interpreter start-up reads; the job's comes later
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
RNDADDENTROPY, RNDRESEEDCRNG = 0x40085203, 0x5207
RB_POWER_OFF = 0x4321FEDC
HEADER_CAP = 1 << 20
# One past the host's copy-out limits (detain.host.tree.MAX_DEPTH levels below a requested
# path, detain.host.copyout.MAX_ENTRIES entries), so a tree beyond them shows there.
COPY_OUT_DEPTH, COPY_OUT_ENTRIES = 65, 10001
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

libc = ctypes.CDLL(None, use_errno=True)


def punch(fd, offset, length):
    """Free a range of a file's pages, keeping its size (and so the writer's offsets)."""
    check(libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
                         ctypes.c_int64(offset), ctypes.c_int64(length)), "punch a hole")


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags=0, data=""):
    os.makedirs(target, exist_ok=True)
    check(libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                     data.encode() or None), f"mount {target}")


def console(message):
    with open("/dev/ttyS0", "w") as tty:
        tty.write(message + "\n")


def port(number):
    """Open one virtio port by its number (the device index varies, the port number not)."""
    for path in glob.glob(f"/dev/vport*p{number}"):
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    raise OSError(f"virtio port {number} is missing")


def read_exact(fd, size):
    """Read `size` bytes from a port. A port reads as EOF while no host end is connected
    (before the save, and in the saved state), so EOF means: wait a moment and retry."""
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            time.sleep(0.002)
            continue
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def boot():
    """Everything shared by every run: mounts, cgroup controllers, warm page cache."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as handle:
        handle.write("+memory +pids")
    os.mkdir(CGROUP)
    with open("/proc/sys/kernel/printk", "w") as handle:
        handle.write("1 1 1 1")
    warm_up()


def mount_run_dirs(uid):
    """The job's writable tmpfs mounts and its (still empty) job dir, made before the save so
    the waiting job can already sit in /scratch; `prepare` sizes them for each run."""
    for path, flags, options in RUN_MOUNTS:
        mount("tmpfs", path, "tmpfs", flags, options.format(uid=uid))
    mount("tmpfs", JOB_DIR, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=0755")


def remount(path, flags, data=None):
    check(libc.mount(b"none", path.encode(), None, MS_REMOUNT | flags,
                     data.encode() if data else None), f"remount {path}")


def warm_up():
    """Start the interpreter once as a job would, so its files sit in the saved page cache."""
    spec = json.load(open("/detain/warmup.json"))
    null = os.open("/dev/null", os.O_RDWR)
    pid = os.fork()
    if pid == 0:
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.dup2(null, spec["fd"])
        os.execve(spec["argv"][0], spec["argv"], {})
    os.waitpid(pid, 0)
    os.close(null)


def receive(fd):
    (size,) = struct.unpack(">I", read_exact(fd, 4))
    if size > HEADER_CAP:
        raise ValueError("job header too large")
    header = json.loads(read_exact(fd, size))
    blobs = {name: read_exact(fd, length) for name, length in header["blobs"]}
    return header, blobs


def refresh(header, blobs):
    """Make this copy of the saved VM unique: new entropy in the CRNG, the host's time."""
    seed = blobs["seed"]
    with open("/dev/urandom", "wb") as rnd:
        fcntl.ioctl(rnd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        fcntl.ioctl(rnd, RNDRESEEDCRNG)
    time.clock_settime(time.CLOCK_REALTIME, header["time"])


def prepare(header, blobs):
    for path, flags, _ in RUN_MOUNTS:
        remount(path, flags, f"size={header['disk']}")
    if header.get("script"):
        path = os.path.join(JOB_DIR, os.path.basename(header["script"]))
        with open(path, "wb") as handle:
            handle.write(blobs["script"])
        os.chmod(path, 0o644)
    remount(JOB_DIR, MS_RDONLY | MS_NOSUID | MS_NODEV)
    mount_inputs(header.get("mounts") or [], blobs.get("mounts", b""))
    # The root is a tmpfs (binds of the image's top-level dirs) only so that mount points
    # can be made above; read-only from here on.
    remount("/", MS_RDONLY | MS_NOSUID | MS_NODEV)
    for name, value in (("memory.max", header["memory"]), ("memory.swap.max", 0),
                        ("pids.max", header["processes"])):
        try:
            with open(f"{CGROUP}/{name}", "w") as handle:
                handle.write(str(value))
        except FileNotFoundError:
            continue  # memory.swap.max is absent without swap accounting: nothing to cap


def mount_inputs(mounts, archive):
    """The host's --mount trees (a tar, entry N for mount N), each bound read-only, nosuid
    and nodev at its sandbox path; the unpacked copy itself is then detached from view."""
    if not mounts:
        return
    import io
    import tarfile

    mount("tmpfs", INPUTS, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
    safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(INPUTS, **safe)  # noqa: S202 - the host's own archive, filtered
    for index, (target, is_dir) in enumerate(mounts):
        if is_dir:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        check(libc.mount(f"{INPUTS}/{index}".encode(), target.encode(), None,
                         MS_BIND | MS_REC, None), f"bind {target}")
        remount(target, MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    check(libc.umount2(INPUTS.encode(), MNT_DETACH), "detach the unpacked inputs")


def apply_seccomp(program):
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                     ctypes.c_char_p(fprog), 0, 0), "seccomp")


def start_tracer(config):
    """In a VM saved for traced runs: start the outside tracer (detain's tracer_main.py;
    microvm/trace.py says why the job cannot reach it) as root, in the root cgroup, before
    the job's process exists. Its records go to a memfd only this init and it hold
    (flushed one by one: TraceForwarder sends them on as they come).
    Returns what the job's process and the end of the run need, or None untraced."""
    trace = config.get("trace")
    if not trace:
        return None
    records = os.memfd_create("detain-trace", os.MFD_CLOEXEC)
    write_all(records, (trace["header"] + "\n").encode())
    request_read, request_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ends = (records, request_read, go_write)
            for fd in ends:
                os.set_inheritable(fd, True)
            os.execve(trace["command"][0], [*trace["command"], *map(str, ends),
                                            *trace["arguments"]], {})
        except BaseException as exc:
            os.write(2, f"detain guest: could not start the tracer: {exc}\n".encode())
        os._exit(127)
    os.close(request_read)
    os.close(go_write)
    return {"pid": pid, "records": records, "request": request_write, "go": go_read,
            "cap": trace["cap"], "wait": trace["wait"]}


def join_tracer(tracer):
    """In the job's process: be seized by the tracer (it answers "1" once it has), else
    refuse to start; nothing of the job's runs untraced."""
    write_all(tracer["request"], f"{os.getpid()}\n".encode())
    if os.read(tracer["go"], 1) != b"1":
        raise OSError("the outside tracer could not attach to the job's process")


class TraceForwarder:
    """After the restore: the tracer's records onto the trace port as the tracer writes
    them (it flushes each one), so a run the host ends at its time limit still brings
    back what was traced until then; at most one byte past the cap in all (the host
    drops what lies past it). What has left, and what lies past the cap, is punched out
    of the memfd: the records (an exec's argv alone can be tens of KiB) would otherwise
    fill guest memory outside the job's cgroup."""

    def __init__(self, tracer, fd):
        self.tracer, self.fd, self.sent = tracer, fd, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.forward, daemon=True)
        self.thread.start()

    def copy(self):
        records = self.tracer["records"]
        size = os.fstat(records).st_size
        end = min(size, self.tracer["cap"] + 1)
        while self.sent < end:
            chunk = os.pread(records, min(end - self.sent, 1 << 20), self.sent)
            if not chunk:
                break
            write_all(self.fd, chunk)
            punch(records, self.sent, len(chunk))
            self.sent += len(chunk)
        if size > end:
            punch(records, end, size - end)

    def forward(self):
        try:
            while not self.done.wait(0.05):
                self.copy()
        except OSError as exc:
            console(f"detain guest: trace forwarding stopped: {exc!r}")

    def finish(self):
        """Once the job and all it started are gone: wait for the tracer's closing record
        (it ends when its last tracee has), then send what is left."""
        deadline = time.monotonic() + self.tracer["wait"]
        while os.waitpid(self.tracer["pid"], os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:  # its records then lack the closing one
                os.kill(self.tracer["pid"], 9)
                os.waitpid(self.tracer["pid"], 0)
                break
            time.sleep(0.005)
        self.done.set()
        self.thread.join()
        self.copy()


def become_job(config, blobs, targets, tracer=None):
    """In the forked child: become the job's process (cgroup, session, fds, uid, seccomp)
    and exec the launcher, which waits for its job. With a `tracer`, it is seized before it
    loads the filters (the one stopping the traced syscalls, then the sandbox's). Any
    failure ends it here."""
    try:
        with open(f"{CGROUP}/cgroup.procs", "w") as handle:
            handle.write(str(os.getpid()))
        os.setsid()
        # Out of the way first, so no target number overwrites a source not yet placed.
        moved = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
                 for target, fd in targets.items()}
        for target, fd in moved.items():
            os.dup2(fd, target, inheritable=True)
        os.chdir("/scratch")
        uid = config["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if tracer is not None:
            join_tracer(tracer)
            apply_seccomp(blobs["trace_filter"])
        apply_seccomp(blobs["seccomp"])
        os.execve(config["argv"][0], config["argv"], BOOT_ENV)
    except BaseException as exc:
        os.write(2, f"detain guest: could not start the job: {exc}\n".encode())
    os._exit(127)


def prestart(config, blobs, fds, tracer):
    """Start the job's process before the save; returns its pid and the write ends of its
    job pipe and its stdin."""
    job_read, job_write = os.pipe()
    stdin_read, stdin_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        become_job(config, blobs, {0: stdin_read, 1: fds["stdout"], 2: fds["stderr"],
                                   config["channel_fd"]: fds["records"],
                                   config["job_fd"]: job_read}, tracer)
    os.close(job_read)
    os.close(stdin_read)
    if tracer is not None:
        os.close(tracer.pop("request"))
        os.close(tracer.pop("go"))
    return pid, job_write, stdin_write


def wait_until_waiting(pid, deadline=30.0):
    """Block until the early-started launcher sits in its read of the job pipe, so the save
    holds a fully started interpreter; returns the CPU seconds (user, system) it spent
    getting there, which the status then leaves out: they are no part of the job.
    A pipe read before its exec (a traced job's process waiting for its tracer's go) is
    not that read: the process must have exec'd, its command line no longer this init's."""
    end = time.monotonic() + deadline
    with open("/proc/self/cmdline", "rb") as handle:
        own = handle.read()
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/wchan") as handle, \
                    open(f"/proc/{pid}/cmdline", "rb") as command:
                if handle.read() == "pipe_read" and command.read() != own:
                    break
        except OSError:
            break  # it died: run() reports how
        time.sleep(0.01)
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def feed_stdin(fd, data):
    """In a thread: the job may read its stdin slowly, or never, or exit first."""
    try:
        write_all(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


def cgroup_value(name, key=None):
    try:
        with open(f"{CGROUP}/{name}") as handle:
            text = handle.read()
    except OSError:
        return None
    if key is None:
        return int(text.split()[0])
    for line in text.splitlines():
        if line.startswith(key + " "):
            return int(line.split()[1])
    return None


def run(job, blobs):
    """Hand the waiting launcher its job, wait for it, then end all it started."""
    pid, job_write, stdin_write, started_cpu = job
    threading.Thread(target=feed_stdin, args=(stdin_write, blobs["stdin"]), daemon=True).start()
    try:
        write_all(job_write, blobs["launcher"])
    finally:
        os.close(job_write)
    _, status, usage = os.wait4(pid, 0)
    with open(f"{CGROUP}/cgroup.kill", "w") as handle:
        handle.write("1")
    deadline = time.monotonic() + 2
    while cgroup_value("cgroup.events", "populated") and time.monotonic() < deadline:
        time.sleep(0.005)  # killed, but not yet all gone
    code = os.waitstatus_to_exitcode(status)
    return {"exit": code if code >= 0 else None, "signal": -code if code < 0 else None,
            "utime": max(0.0, usage.ru_utime - started_cpu[0]),
            "stime": max(0.0, usage.ru_stime - started_cpu[1]), "maxrss_kib": usage.ru_maxrss,
            "oom_kills": cgroup_value("memory.events", "oom_kill"),
            "memory_peak": cgroup_value("memory.peak"),
            "pids_refused": cgroup_value("pids.events", "max"),
            "kernel": os.uname().release}


class CapReached(Exception):
    pass


class CappedPort:
    """A write-only file over a port that refuses to send more than `cap` bytes."""

    def __init__(self, fd, cap):
        self.fd, self.left = fd, cap

    def write(self, data):
        if len(data) > self.left:
            raise CapReached()
        write_all(self.fd, data)
        self.left -= len(data)
        return len(data)


def plain_parents(relative):
    """True when no directory between /scratch and `relative` is a symlink (the job is
    dead, so nothing can change that afterwards): a request never leaves /scratch."""
    path = "/scratch"
    for part in relative.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path) or not os.path.isdir(path):
            return False
    return True


def send_copy_out(paths, fd, cap):
    """The requested paths under /scratch as one tar, links stored as links, never followed;
    the host checks every byte again. A stream cut at the cap just ends early."""
    if not paths:
        return
    import tarfile

    try:
        with tarfile.open(fileobj=CappedPort(fd, cap), mode="w|",
                          format=tarfile.PAX_FORMAT) as tar:
            for relative in paths:
                path = os.path.normpath(os.path.join("/scratch", relative))
                if plain_parents(relative) and os.path.lexists(path):
                    pack_tree(tar, path, relative)
    except (CapReached, OSError) as exc:
        console(f"detain guest: copy-out ended early: {exc!r}")


def pack_tree(tar, path, arcname):
    """Add `path` and everything under it without recursion (the job may leave a chain
    10,000 directories deep): an explicit stack of directory fds, read lazily, each entry
    named through /proc/self/fd (a short path at any depth) and never followed. It stops
    one level and one entry past the host's limits, so the host sees and reports them."""
    # Entries are counted as tar.members, what went in: tarfile leaves out a socket
    # without a word, and a count of tried entries let a capped tree end unreported.
    if len(tar.members) >= COPY_OUT_ENTRIES:
        return
    tar.add(path, arcname=arcname, recursive=False)
    if os.path.islink(path) or not os.path.isdir(path):
        return
    top = os.open(path, O_DIR)
    stack = [(top, arcname, os.scandir(top))]
    try:
        while stack and len(tar.members) < COPY_OUT_ENTRIES:
            dir_fd, prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                entries.close()
                os.close(dir_fd)
                continue
            name = f"{prefix}/{entry.name}"
            try:
                tar.add(f"/proc/self/fd/{dir_fd}/{entry.name}", arcname=name, recursive=False)
                if entry.is_dir(follow_symlinks=False) and len(stack) < COPY_OUT_DEPTH:
                    child = os.open(entry.name, O_DIR, dir_fd=dir_fd)
                    stack.append((child, name, os.scandir(child)))
            except OSError as exc:
                console(f"detain guest: copy-out skipped an entry: {exc!r}")
    finally:
        for dir_fd, _, entries in stack:
            entries.close()
            os.close(dir_fd)


def main():
    boot()
    fds = {name: port(number) for name, number in (
        ("job", PORT_JOB), ("stdout", PORT_STDOUT), ("stderr", PORT_STDERR),
        ("records", PORT_RECORDS), ("status", PORT_STATUS), ("copyout", PORT_COPYOUT),
        ("trace", PORT_TRACE))}
    config, config_blobs = receive(fds["job"])  # the boot message: the same for every run
    mount_run_dirs(config["uid"])
    tracer = start_tracer(config)
    job = prestart(config, config_blobs, fds, tracer)
    job += (wait_until_waiting(job[0]),)
    console("detain-guest-ready")
    header, blobs = receive(fds["job"])  # the VM is saved while blocked here
    status = {}
    forwarder = TraceForwarder(tracer, fds["trace"]) if tracer is not None else None
    try:
        refresh(header, blobs)
        prepare(header, blobs)
        status = run(job, blobs)
        send_copy_out(header.get("copy_out") or [], fds["copyout"], header["copy_out_cap"])
    except Exception as exc:
        status = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    try:
        if forwarder is not None:
            forwarder.finish()
    except OSError as exc:
        console(f"detain guest: the trace was not sent: {exc!r}")
    write_all(fds["status"], (json.dumps(status) + "\n").encode())
    os.sync()
    libc.reboot(RB_POWER_OFF)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        print(f"detain guest init failed: {exc!r}", file=sys.stderr)
    libc.reboot(RB_POWER_OFF)
