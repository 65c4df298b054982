"""Filesystem probes: host secrets, writes outside scratch, links, copy-out, devices, /proc."""

from __future__ import annotations

import ctypes
import os
import platform
import textwrap
from pathlib import Path

from .bait import KEYRING, Bait
from .model import Attack, NotApplicable, Outcome, leaked, probe, program

READ_PATHS = """
for path in PATHS:
    try:
        with open(path, 'rb') as handle:
            sys.stdout.buffer.write(handle.read(1 << 16) + b'\\n')
    except OSError as exc:
        print(path, type(exc).__name__)
"""


@probe("filesystem", "home-secret", "read a 0600 private key in the caller's home (as "
       "~/.ssh/id_ed25519), and the real ~/.ssh")
def home_secret(bait: Bait) -> Attack:
    key = bait.home_dir(bait.tag) / "id_ed25519"
    key.write_text(bait.secret)
    os.chmod(key, 0o600)
    ssh = Path.home() / ".ssh"
    paths = [str(key), str(ssh / "id_rsa"), str(ssh / "id_ed25519"), str(ssh / "config")]
    return Attack(program(bait.tag, READ_PATHS, PATHS=paths),
                  lambda out: leaked(bait.secret, out, "the key's contents"))


@probe("filesystem", "home-listing", "list the caller's home directory")
def home_listing(bait: Bait) -> Attack:
    bait.home_dir(bait.secret)
    body = """
    for path in (HOME, os.path.dirname(HOME)):
        try:
            print(path, sorted(os.listdir(path)))
        except OSError as exc:
            print(path, type(exc).__name__)
    """
    return Attack(program(bait.tag, body, HOME=str(Path.home())),
                  lambda out: leaked(bait.secret, out, "a file name in the caller's home"))


@probe("filesystem", "world-readable", "read a world-readable host file outside any "
       "temp dir (a config file with a token in it)")
def world_readable(bait: Bait) -> Attack:
    path = bait.file("settings.ini", f"token = {bait.secret}\n")
    return Attack(program(bait.tag, READ_PATHS, PATHS=[str(path)]),
                  lambda out: leaked(bait.secret, out, "the file's token"))


@probe("filesystem", "shadow", "read /etc/shadow")
def shadow(bait: Bait) -> Attack:
    try:
        lines = [line for line in Path("/etc/shadow").read_text().splitlines()
                 if len(line) >= 8]
    except OSError as exc:
        raise NotApplicable("the host judge cannot read /etc/shadow to compare "
                            f"({exc.strerror}); run selftest as root") from None

    def check(out: Outcome) -> str | None:
        return next((f"/etc/shadow line {line.split(':')[0]!r} came back" for line in lines
                     if line.encode() in out.output), None)
    return Attack(program(bait.tag, READ_PATHS, PATHS=["/etc/shadow", "/etc/gshadow"]), check)


def _write_attack(bait: Bait, directory: str) -> Attack:
    target = os.path.join(directory, f"detain-selftest-{bait.tag}")
    body = """
    try:
        with open(TARGET, 'w') as handle:
            handle.write('escaped')
    except OSError as exc:
        print('write', type(exc).__name__)
    try:
        os.mkdir(TARGET + '.d')
    except OSError as exc:
        print('mkdir', type(exc).__name__)
    """
    return Attack(program(bait.tag, body, TARGET=target),
                  _ignore(bait.canaries([target, target + ".d"])))


def _ignore(check):
    """Adapt a no-argument host check to the Outcome-taking signature."""
    return lambda _out: check()


for _name, _dir in (("write-tmp", "/tmp"), ("write-var-tmp", "/var/tmp"),
                    ("write-dev-shm", "/dev/shm")):
    probe("filesystem", _name, f"create a file in the host's {_dir}")(
        lambda bait, _dir=_dir: _write_attack(bait, _dir))


@probe("filesystem", "write-home", "create a file in the caller's home directory")
def write_home(bait: Bait) -> Attack:
    return _write_attack(bait, str(Path.home()))


@probe("filesystem", "write-script-dir", "create a file next to the script being run (a "
       "world-writable project directory)")
def write_script_dir(bait: Bait) -> Attack:
    project = bait.subdir("project", 0o777)
    target = project / f"written-{bait.tag}"
    body = """
    for directory in (os.path.dirname(os.path.abspath(__file__)), PROJECT):
        try:
            with open(os.path.join(directory, NAME), 'w') as handle:
                handle.write('escaped')
        except OSError as exc:
            print(directory, type(exc).__name__)
    """
    script = project / "job.py"
    script.write_text(program(bait.tag, body, PROJECT=str(project), NAME=target.name))
    os.chmod(script, 0o644)
    return Attack("", _ignore(bait.canaries([str(target)])), script=str(script))


@probe("filesystem", "symlink-read", "plant a symlink in scratch to a host secret and "
       "read through it")
def symlink_read(bait: Bait) -> Attack:
    key = bait.home_dir(bait.tag) / "credentials"
    key.write_text(bait.secret)
    public = bait.file("public.txt", bait.secret)
    body = """
    for number, path in enumerate(PATHS):
        link = 'link%d' % number
        os.symlink(path, link)
        try:
            with open(link, 'rb') as handle:
                sys.stdout.buffer.write(handle.read(4096) + b'\\n')
        except OSError as exc:
            print(link, type(exc).__name__)
    """
    return Attack(program(bait.tag, body, PATHS=[str(key), str(public)]),
                  lambda out: leaked(bait.secret, out, "a secret read through a symlink"))


def _copied(dest: Path, secret: str) -> str | None:
    """What a copy-out brought to the host that it must not: links, or the secret."""
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                return f"copy-out created a symlink on the host: {path}"
            if not os.path.isfile(path):
                if not os.path.isdir(path):
                    return f"copy-out created a special file on the host: {path}"
                continue
            with open(path, "rb") as handle:
                if secret.encode() in handle.read(1 << 20):
                    return f"copy-out brought a host secret back in {path}"
    return None


def _copy_out_attack(bait: Bait, body: str, **consts) -> Attack:
    """A job that prepares scratch/out, copied out to a host dir the check then inspects."""
    dest = bait.dir / "copied"
    key = bait.home_dir(bait.tag) / "credentials"
    key.write_text(bait.secret)
    os.chmod(key, 0o600)
    public = bait.file("public/readme.txt", bait.secret)

    def check(out: Outcome) -> str | None:
        return leaked(bait.secret, out, "a secret") or _copied(dest, bait.secret)
    return Attack(program(bait.tag, body, KEY=str(key), PUBLIC=str(public), **consts), check,
                  settings={"copy_out": [f"out:{dest}"]})


@probe("filesystem", "copy-out-symlink", "leave symlinks to host secrets in a --copy-out "
       "dir, for detain to follow on the host")
def copy_out_symlink(bait: Bait) -> Attack:
    body = """
    os.mkdir('out')
    os.symlink(KEY, 'out/key')
    os.symlink(PUBLIC, 'out/readme')
    os.symlink(os.path.dirname(PUBLIC), 'out/dir')
    os.symlink('/etc', 'out/etc')
    """
    return _copy_out_attack(bait, body)


@probe("filesystem", "copy-out-traversal", "make the --copy-out source itself a symlink to "
       "a host directory")
def copy_out_traversal(bait: Bait) -> Attack:
    return _copy_out_attack(bait, "os.symlink(os.path.dirname(PUBLIC), 'out')\n")


@probe("filesystem", "copy-out-hardlink", "hard-link host files into a --copy-out dir, for "
       "detain (maybe root) to read them")
def copy_out_hardlink(bait: Bait) -> Attack:
    body = """
    os.mkdir('out')
    for number, path in enumerate((KEY, PUBLIC)):
        try:
            os.link(path, 'out/link%d' % number)
        except OSError as exc:
            print(path, type(exc).__name__)
    """
    return _copy_out_attack(bait, body)


@probe("filesystem", "copy-out-special", "leave a FIFO, a socket and a huge sparse file in a "
       "--copy-out dir, to hang or fill the host")
def copy_out_special(bait: Bait) -> Attack:
    body = """
    import socket
    os.mkdir('out')
    os.mkfifo('out/fifo')
    with socket.socket(socket.AF_UNIX) as server:
        server.bind('out/socket')
    with open('out/sparse', 'wb') as handle:
        try:
            handle.truncate(1 << 40)
        except OSError as exc:
            print('sparse', type(exc).__name__)
    """
    attack = _copy_out_attack(bait, body)
    dest = bait.dir / "copied"
    previous = attack.check

    def check(out: Outcome) -> str | None:
        if out.wall > 30:
            return f"copy-out hung the host for {out.wall:.0f} s"
        if os.path.exists(dest) and sum(f.stat().st_size for f in dest.rglob("*")
                                        if f.is_file()) > 64 << 20:
            return "copy-out wrote more than the disk cap to the host"
        return previous(out)
    attack.check = check
    return attack


@probe("filesystem", "kmsg", "write into the host's kernel log through /dev/kmsg and a "
       "mknod'ed copy of it")
def kmsg(bait: Bait) -> Attack:
    try:
        log = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise NotApplicable(f"the host judge cannot read /dev/kmsg ({exc.strerror})") from None
    bait.on_close(lambda: os.close(log))
    os.lseek(log, 0, os.SEEK_END)
    body = """
    try:
        os.mknod('kmsg', 0o020666, os.makedev(1, 11))
    except OSError as exc:
        print('mknod', type(exc).__name__)
    for path in ('/dev/kmsg', 'kmsg'):
        try:
            with open(path, 'w') as handle:
                handle.write(LINE)
        except OSError as exc:
            print(path, type(exc).__name__)
    """
    line = f"detain-selftest {bait.secret}\n"

    def check(_out: Outcome) -> str | None:
        while True:
            try:
                record = os.read(log, 8192)
            except BlockingIOError:
                return None
            except OSError:
                continue  # EPIPE: records were overwritten while reading
            if not record:
                return None
            if bait.secret.encode() in record:
                return "the job wrote into the host's kernel log"
    return Attack(program(bait.tag, body, LINE=line), check)


@probe("filesystem", "proc-environ", "read other processes' environment through "
       "/proc/PID/environ")
def proc_environ(bait: Bait) -> Attack:
    victim = bait.victim()
    body = """
    pids = [p for p in os.listdir('/proc') if p.isdigit()] + [str(VICTIM), 'self', '1']
    for pid in pids:
        try:
            with open('/proc/%s/environ' % pid, 'rb') as handle:
                sys.stdout.buffer.write(handle.read(1 << 16) + b'\\n')
        except OSError:
            pass
    """
    return Attack(program(bait.tag, body, VICTIM=victim.pid),
                  lambda out: leaked(bait.secret, out, "a host process's environment"))


@probe("filesystem", "proc-cmdline", "read other processes' command lines through "
       "/proc/PID/cmdline")
def proc_cmdline(bait: Bait) -> Attack:
    victim = bait.victim(in_argv=True)
    body = """
    for pid in [p for p in os.listdir('/proc') if p.isdigit()] + [str(VICTIM)]:
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                sys.stdout.buffer.write(handle.read(1 << 16) + b'\\n')
        except OSError:
            pass
    """
    return Attack(program(bait.tag, body, VICTIM=victim.pid),
                  lambda out: leaked(bait.secret, out, "a host process's command line"))


@probe("filesystem", "proc-mountinfo", "read the host's mount table through /proc")
def proc_mountinfo(bait: Bait) -> Attack:
    host = [line.encode() for line in Path("/proc/self/mountinfo").read_text().splitlines()]

    def check(out: Outcome) -> str | None:
        # Mount ids are global: the same lines mean the same mounts, not a copy.
        same = [line for line in host if line in out.output]
        return f"{len(same)} host mounts visible" if len(same) >= 3 else None
    return Attack(program(bait.tag, READ_PATHS, PATHS=["/proc/self/mountinfo",
                                                      "/proc/1/mountinfo"]), check)


@probe("filesystem", "sys-leak", "read host hardware identity from /sys (network MAC "
       "addresses, DMI ids)")
def sys_leak(bait: Bait) -> Attack:
    macs = host_macs()
    if not macs:
        raise NotApplicable("this host has no network interface with a MAC address to compare")
    body = ("import glob\nPATHS = glob.glob('/sys/class/net/*/address') + "
            "['/sys/class/dmi/id/product_uuid']\n" + READ_PATHS)

    def check(out: Outcome) -> str | None:
        return next((f"the host's MAC address {mac} came back" for mac in macs
                     if mac.encode() in out.output), None)
    return Attack(program(bait.tag, body), check)


def host_macs() -> list[str]:
    """MAC addresses of the host's real interfaces, as /sys prints them."""
    macs = []
    for name in os.listdir("/sys/class/net"):
        try:
            mac = Path(f"/sys/class/net/{name}/address").read_text().strip()
        except OSError:
            continue
        if name != "lo" and mac and mac.strip("0:") and mac != "ff:ff:ff:ff:ff:ff":
            macs.append(mac)
    return macs


KEY_SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl
KEY_SPEC_USER_KEYRING, KEYCTL_UNLINK, KEYCTL_INVALIDATE = -4, 9, 21


@probe("filesystem", "proc-keys", "read the caller's kernel keys through /proc/keys and "
       "keyctl")
def proc_keys(bait: Bait) -> Attack:
    numbers = KEY_SYSCALLS.get(platform.machine())
    if numbers is None:
        raise NotApplicable(f"no keyring syscall numbers known for {platform.machine()}")
    add_key, keyctl = numbers
    bait.exclusive(KEYRING)
    libc = ctypes.CDLL(None, use_errno=True)
    description = f"detain-selftest-{bait.secret}".encode()
    key = libc.syscall(add_key, b"user", description, bait.secret.encode(),
                       len(bait.secret), KEY_SPEC_USER_KEYRING)
    if key < 0:
        raise NotApplicable("the host judge cannot add a key to its own keyring "
                            f"({os.strerror(ctypes.get_errno())})")
    bait.on_close(lambda: libc.syscall(keyctl, KEYCTL_INVALIDATE, key))
    body = READ_PATHS + textwrap.dedent("""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(256)
    size = libc.syscall(KEYCTL, 11, KEY, buffer, 256)
    print('keyctl read', size, buffer.raw[:max(size, 0)])
    """)
    return Attack(program(bait.tag, body, PATHS=["/proc/keys", "/proc/key-users"],
                          KEYCTL=keyctl, KEY=key),
                  lambda out: leaked(bait.secret, out, "a host key"))
