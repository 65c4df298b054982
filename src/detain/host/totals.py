"""Which limits hold for all of a run's processes and files together, and what a run says.

rlimits are per process (RLIMIT_AS, RLIMIT_CPU) or per file (RLIMIT_FSIZE): 64 processes
under `--memory 64M` may hold 4 GiB between them, 12 files under `--disk 8M` 96 MiB. A
memory total needs a cgroup (detain's own as root, or the user's delegated cgroup v2
subtree); a disk total needs a size-capped tmpfs as scratch. Where neither exists, the
host still watches scratch and ends a job that passes its cap, but a fast writer gets past
a watch, so that is not a total. A memory or disk limit the caller set must be a total or
the run is refused (DESIGN rule 4), unless the caller accepts less with
`--limits-scope per-process`; every run states what held.
"""

from __future__ import annotations

from ..errors import ProtectionError
from ..policy import SCRATCH, Limits
from ..units import format_size
from .cgroups import Cgroup


def must_be_total(limits: Limits, name: str) -> bool:
    """Whether limit `name` ("memory_bytes", "disk_bytes") must hold as a total."""
    return limits.scope == "total" or (limits.scope == "auto" and name in limits.asked)


def require(limits: Limits, cgroup: Cgroup | None, why_no_cgroup: str,
            scratch_capped: bool) -> None:
    """Refuse a run whose limits must be totals when one of them would not be."""
    memory, disk = format_size(limits.memory_bytes), format_size(limits.disk_bytes)
    short, ways, accept = [], ["run detain as root"], []
    if cgroup is None and must_be_total(limits, "memory_bytes"):
        short.append(f"memory ({memory} would hold per process: {why_no_cgroup})")
        ways.append("in a systemd user session with a delegated cgroup (systemd-run --user "
                    "--scope -p Delegate=yes detain ...)")
        accept.append(f"{memory} per process")
    if not scratch_capped and must_be_total(limits, "disk_bytes"):
        short.append(f"disk ({disk} would hold per file: this backend has no size-capped "
                     "scratch for this user)")
        ways.append("on --backend bwrap without --copy-out")
        accept.append(f"{disk} per file")
    if not short:
        return
    raise ProtectionError(
        f"a limit asked for must hold for the whole job, and as this user detain cannot "
        f"hold {' or '.join(short)} that way; {', '.join(ways)}, on --backend microvm, or "
        f"pass --limits-scope per-process to accept {' and '.join(accept)}")


def statement(limits: Limits, cgroup: Cgroup | None, scratch_capped: bool,
              inside: bool = False) -> dict[str, str]:
    """What holds, limit by limit, in words a user can check the run against."""
    memory, disk = format_size(limits.memory_bytes), format_size(limits.disk_bytes)
    cpu = f"{limits.cpu_seconds:g} s per process (RLIMIT_CPU); the wall clock " \
          f"({limits.wall_seconds:g} s) ends the whole run"
    if inside:
        return {"memory": f"{memory} total (the sandbox's own kernel, in a cgroup)",
                "processes": f"{limits.processes} total (the sandbox's own kernel)",
                "disk": f"{disk} total in {SCRATCH} (inside the sandbox)", "cpu": cpu}
    if cgroup is not None:
        where = f"cgroup v{cgroup.version}" + (", delegated" if cgroup.delegated else "")
        held = {"memory": f"{memory} total ({where})",
                "processes": f"{limits.processes} total ({where})"}
    else:
        held = {"memory": f"{memory} per process (RLIMIT_AS, no cgroup here), up to "
                          f"{limits.processes} processes; shared memory (memfd, /dev/shm) "
                          f"is bounded only per file ({disk})",
                "processes": f"{limits.processes} (RLIMIT_NPROC, counted per uid)"}
    if scratch_capped:
        held["disk"] = (f"{disk} total in {SCRATCH} (size-capped tmpfs); a private /tmp or "
                        f"/dev/shm, where the sandbox has one, is capped at {disk} of its own")
    else:
        from .disk_watch import DESCRIPTION  # loads ctypes: only for a scratch it watches

        held["disk"] = (f"{disk} per file (RLIMIT_FSIZE); {SCRATCH} as a whole "
                        f"{DESCRIPTION}; files deleted while held open are not seen")
    held["cpu"] = cpu
    return held
