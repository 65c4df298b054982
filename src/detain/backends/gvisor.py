"""Level 4: gVisor's runsc, a user-space kernel between the job and the host's.

detain writes the OCI bundle itself: the registry-less skeleton as a read-only root, host
/usr and interpreter bound read-only through runsc's gofer, a private /tmp, the scratch
dir, detain's seccomp profile loaded inside gVisor (`--oci-seccomp`), no network
(`--network=none`), and the job as the run's fresh uid (never 0) in the run's cgroup.
runsc's own state lives in the run dir (`--root`), so nothing of it outlives the run.

Quirks seen with runsc on this kind of host, and how they are handled:
  * the sandbox's own threads count against the pids cgroup: a pids limit below ~100
    crashes it at start, so its host cgroup gets `extra_pids` on top of the job's limit;
  * hitting the pids or memory limit kills the whole sandbox, hello or not: that is a
    limit hit (status 137), not a detain error;
  * the KVM platform hangs under nested virtualisation: ptrace is used (systrap where the
    runsc is new enough); DETAIN_GVISOR_PLATFORM overrides.
`--trace syscalls` turns on runsc's strace, logged as JSON (one escaped record a line, so a
path holding a newline cannot start a record: report.kernel_trace); its records are kept
raw in `Result.trace`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

from ..errors import BackendUnavailable
from ..host import containers, seccomp_oci
from ..host.rootfs import Bind
from ..host.tools import tool_output, tool_version
from ..policy import SCRATCH
from ..result import Result
from . import Probe
from .base import Launch, RunContext
from .container import ContainerBackend

CANDIDATES = ("/usr/local/bin/runsc", "/usr/bin/runsc")


def _release(path: str) -> tuple[int, ...]:
    """A runsc's release date as a sortable tuple (`release-20240807.0`, `0.0~20221219.0`)."""
    found = tool_version(path, r"(\d{8}\.\d+)")
    return tuple(int(p) for p in found.split(".")) if found else ()


@functools.lru_cache(maxsize=1)
def find_runsc() -> tuple[str, tuple[int, ...]] | None:
    """The newest runsc: one on PATH first, else the Debian package's."""
    paths = []
    for path in (shutil.which("runsc"), *CANDIDATES):
        if path and os.access(path, os.X_OK) and os.path.realpath(path) not in paths:
            paths.append(os.path.realpath(path))
    found = [(path, _release(path)) for path in paths]
    found = [item for item in found if item[1]]
    return max(found, key=lambda item: item[1]) if found else None


@functools.lru_cache(maxsize=1)
def _flags(runsc: str) -> str:
    return tool_output([runsc, "flags"])  # runsc prints its flags to stderr


def platform(runsc: str) -> str:
    chosen = os.environ.get("DETAIN_GVISOR_PLATFORM")
    if chosen:
        return chosen
    return "systrap" if "systrap" in _flags(runsc) else "ptrace"


class GvisorBackend(ContainerBackend):
    name = "gvisor"
    extra_pids = 128  # the sentry's and gofer's own threads (below ~100 it cannot start)
    supports_trace = True
    # gVisor refuses to open a FIFO for writing on a read-only mount. Safe anyway: runsc
    # runs as root only, so the FIFO is root's and the job (another uid) cannot chmod it.
    channel_mount_writable = True

    def probe(self) -> Probe:
        found = find_runsc()
        if found is None:
            return Probe(False, "runsc is not installed; apt install runsc (or put a newer "
                                "release on PATH)")
        version = ".".join(map(str, found[1]))
        if os.geteuid() != 0:
            return Probe(False, "rootless runsc (--rootless) maps only your uid, as root "
                                "inside, so its gofer can create scratch files for no "
                                "other uid and the job would run as root; run detain as "
                                "root, or use --backend podman", version)
        if "host-fifo" not in _flags(found[0]):
            return Probe(False, f"runsc {version} lacks --host-fifo (needed for detain's "
                                "channel); install a newer runsc", version)
        return Probe(True, version=version, details=(("path", found[0]),
                                                     ("platform", platform(found[0]))))

    def container_launch(self, ctx: RunContext, binds: list[Bind], command: list[str],
              user: tuple[int, int]) -> Launch:
        found = find_runsc()
        if found is None:
            raise BackendUnavailable(self.probe().reason)
        runsc = found[0]
        state = ctx.run.subdir("runsc", 0o700)
        bundle = ctx.run.subdir("bundle", 0o700)
        (bundle / "config.json").write_text(json.dumps(self.spec(ctx, binds, command, user)))
        prefix = [runsc, "--root", str(state)]
        chosen = platform(runsc)
        flags = ["--network=none", "--host-fifo=open", f"--platform={chosen}", "--oci-seccomp"]
        if ctx.policy.trace == "syscalls":
            trace_dir = ctx.run.subdir("trace", 0o700)
            flags += ["--strace", "--debug-log-format=json", f"--debug-log={trace_dir}/"]
            ctx.extra["trace_dir"] = trace_dir
        if ctx.cgroup is None:
            flags.append("--ignore-cgroups")
        # runsc names its control socket after the container, in the host's abstract
        # socket namespace: the id must be unique across runs, not only within --root.
        name = f"detain-{ctx.run.path.name}"
        ctx.extra.update(runsc=runsc, platform=chosen, release=".".join(map(str, found[1])),
                         container=name, stop=[*prefix, "delete", "--force", name])
        ctx.run.record(containers.KIND, {"remove": ctx.extra["stop"], "env": {}})
        return Launch([*prefix, *flags, "run", "--bundle", str(bundle), name], env={})

    def spec(self, ctx: RunContext, binds: list[Bind], command: list[str],
             user: tuple[int, int]) -> dict:
        """The OCI runtime spec of this run's sandbox."""
        lim = ctx.policy.limits
        tmpfs = ["nosuid", "nodev", "mode=1777", f"size={lim.disk_bytes}"]
        mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
                  {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": tmpfs},
                  {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": tmpfs}]
        mounts += [{"destination": b.target, "type": "bind", "source": b.source,
                    "options": ["rbind", "rw" if b.writable else "ro"]} for b in binds]
        caps: dict[str, list[str]] = {k: [] for k in ("bounding", "effective", "inheritable",
                                                      "permitted", "ambient")}
        linux: dict = {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts",
                                                             "mount")],
                       "seccomp": seccomp_oci.profile()}
        parent = self.cgroup_parent(ctx)
        if parent is not None:
            linux["cgroupsPath"] = parent
        return {
            "ociVersion": "1.0.2",
            "process": {"terminal": False, "user": {"uid": user[0], "gid": user[1]},
                        "args": command, "cwd": SCRATCH, "capabilities": caps,
                        "env": [f"{k}={v}" for k, v in self.guest_environment(ctx).items()],
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": lim.open_files,
                                     "soft": lim.open_files}],
                        "noNewPrivileges": True},
            "root": {"path": str(self.skeleton(ctx)), "readonly": True},
            "hostname": "detain",
            "mounts": mounts,
            "linux": linux,
        }

    def stop(self, ctx: RunContext) -> None:
        """Nothing beyond the base kill: the sandbox is in the run's cgroup and the gofer in
        runsc's process group. (`runsc delete --force` waits ~5 s for a graceful stop.)"""

    def kill(self, ctx: RunContext, proc) -> None:
        super().kill(ctx, proc)
        if proc.returncode is not None:
            # `runsc run` deleted the sandbox on exit, or the kill above ended it (sandbox
            # in the run's cgroup, gofer in runsc's process group); its state dir goes
            # with the run dir. The journal keeps the record for a sweep after a crash.
            ctx.run.state.pop(containers.KIND, None)

    def _fill(self, result: Result, ctx: RunContext, outcome) -> None:
        super()._fill(result, ctx, outcome)
        if "trace_dir" in ctx.extra:
            from ..report.kernel_trace import read_trace  # only --trace runs load it

            result.trace = read_trace(ctx.extra["trace_dir"], ctx.policy.limits.output_bytes)
        if outcome.timed_out or ctx.cgroup is None:
            return
        # The sandbox as a whole dies when the host cgroup's memory or pids cap is hit.
        if ctx.cgroup.oom_kills():
            self._limit_hit(result, "memory", "memory limit hit: the kernel's OOM killer "
                                              "ended the gVisor sandbox")
        elif ctx.cgroup.pids_refusals() and result.exit_code not in (0, None):
            self._limit_hit(result, "processes", "process limit hit: the gVisor sandbox "
                                                 "could not create a thread and stopped")

    @staticmethod
    def _limit_hit(result: Result, limit: str, note: str) -> None:
        result.error = None
        if result.limit is None:
            result.limit = limit
            result.notes.append(note)

    def host_assurance(self, ctx: RunContext, seen: dict) -> dict:
        return {**super().host_assurance(ctx, seen),
                "kernel": f"gVisor (runsc {ctx.extra.get('release')}, platform "
                          f"{ctx.extra.get('platform')})",
                # gVisor's /proc/self/status has no NoNewPrivs line; runsc sets it from
                # the spec's noNewPrivileges (prctl(PR_GET_NO_NEW_PRIVS) reads 1 inside).
                "no_new_privs": seen.get("status", {}).get("NoNewPrivs", "1") == "1",
                "seccomp_profile": "detain's, enforced by gVisor's kernel (--oci-seccomp)"}


BACKEND = GvisorBackend()
