"""PID 1 of detain's micro-VM: prepares the guest, waits for one job, runs it, powers off.

Stdlib only: it runs inside the guest under the image's interpreter, as root, and is the
only guest code detain trusts. The VM is booted once per cache version and saved while this
script blocks reading the job port, so everything before that read is shared by every run
and everything after it happens in a fresh restored copy, exactly once:
  1. fresh randomness (the saved CRNG state is the same in every copy) and the host's clock;
  2. per-run tmpfs mounts (/scratch with the disk cap, /tmp, /dev/shm, the job dir) and a
     cgroup holding the job's memory and process limits;
  3. the job itself as an unprivileged uid, with no_new_privs and detain's seccomp filter,
     stdout/stderr/records going straight to their own virtio ports;
  4. a status record on a root-only port: exit status, guest-kernel OOM kills, CPU, RSS.
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
import time

# Port numbers, agreed with detain.microvm.machine.
PORT_JOB, PORT_STDOUT, PORT_STDERR, PORT_RECORDS, PORT_STATUS = 1, 2, 3, 4, 5
CGROUP = "/sys/fs/cgroup/job"
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY = 2, 4, 8, 1
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RNDADDENTROPY, RNDRESEEDCRNG = 0x40085203, 0x5207
RB_POWER_OFF = 0x4321FEDC
HEADER_CAP = 1 << 20

libc = ctypes.CDLL(None, use_errno=True)


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
    uid, disk = header["uid"], header["disk"]
    flags = MS_NOSUID | MS_NODEV
    mount("tmpfs", "/scratch", "tmpfs", flags, f"size={disk},mode=0700,uid={uid},gid={uid}")
    mount("tmpfs", "/tmp", "tmpfs", flags, f"size={disk},mode=1777")
    mount("tmpfs", "/dev/shm", "tmpfs", flags | MS_NOEXEC, f"size={disk},mode=1777")
    mount("tmpfs", "/detain/job", "tmpfs", flags, "size=64m,mode=0755")
    if header.get("script"):
        path = os.path.join("/detain/job", os.path.basename(header["script"]))
        with open(path, "wb") as handle:
            handle.write(blobs["script"])
        os.chmod(path, 0o644)
    check(libc.mount(b"tmpfs", b"/detain/job", None, 32 | MS_RDONLY | flags, None),
          "remount job dir read-only")  # 32 = MS_REMOUNT
    for name, value in (("memory.max", header["memory"]), ("memory.swap.max", 0),
                        ("pids.max", header["processes"])):
        try:
            with open(f"{CGROUP}/{name}", "w") as handle:
                handle.write(str(value))
        except FileNotFoundError:
            continue  # memory.swap.max is absent without swap accounting: nothing to cap
    stdin = os.memfd_create("stdin", 0)
    write_all(stdin, blobs["stdin"])
    os.lseek(stdin, 0, os.SEEK_SET)
    return stdin


def apply_seccomp(program):
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                     ctypes.c_char_p(fprog), 0, 0), "seccomp")


def child(header, blobs, fds):
    """In the forked child: become the job. Any failure ends it before untrusted code runs."""
    try:
        with open(f"{CGROUP}/cgroup.procs", "w") as handle:
            handle.write(str(os.getpid()))
        os.setsid()
        for target, fd in ((0, fds["stdin"]), (1, fds["stdout"]), (2, fds["stderr"]),
                           (header["channel_fd"], fds["records"])):
            if fd == target:
                os.set_inheritable(fd, True)
            else:
                os.dup2(fd, target, inheritable=True)
        os.chdir("/scratch")
        uid = header["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        apply_seccomp(blobs["seccomp"])
        os.execve(header["argv"][0], header["argv"], header["env"])
    except BaseException as exc:
        os.write(2, f"detain guest: could not start the job: {exc}\n".encode())
    os._exit(127)


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


def run(header, blobs, fds):
    pid = os.fork()
    if pid == 0:
        child(header, blobs, fds)
    _, status, usage = os.wait4(pid, 0)
    with open(f"{CGROUP}/cgroup.kill", "w") as handle:
        handle.write("1")
    code = os.waitstatus_to_exitcode(status)
    return {"exit": code if code >= 0 else None, "signal": -code if code < 0 else None,
            "utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss_kib": usage.ru_maxrss,
            "oom_kills": cgroup_value("memory.events", "oom_kill"),
            "memory_peak": cgroup_value("memory.peak"),
            "pids_refused": cgroup_value("pids.events", "max"),
            "kernel": os.uname().release}


def main():
    boot()
    fds = {name: port(number) for name, number in (
        ("job", PORT_JOB), ("stdout", PORT_STDOUT), ("stderr", PORT_STDERR),
        ("records", PORT_RECORDS), ("status", PORT_STATUS))}
    console("detain-guest-ready")
    header, blobs = receive(fds["job"])  # the VM is saved while blocked here
    status = {}
    try:
        refresh(header, blobs)
        fds["stdin"] = prepare(header, blobs)
        status = run(header, blobs, fds)
    except Exception as exc:
        status = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    write_all(fds["status"], (json.dumps(status) + "\n").encode())
    os.sync()
    libc.reboot(RB_POWER_OFF)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        print(f"detain guest init failed: {exc!r}", file=sys.stderr)
    libc.reboot(RB_POWER_OFF)
