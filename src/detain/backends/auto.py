"""What `auto` picks, and why: the rule, the job's needs, and the choice as a user sees it.

The rule: the strongest backend (AUTO_ORDER) at or above the policy's minimum level that
  1. runs here (its probe succeeds);
  2. is not emulated: the micro-VM only with KVM. Under TCG every run pays about a second
     to restore the VM and the job's own code runs many times slower; it is used only when
     asked for by name (`--backend microvm`);
  3. can do what this job needs: requirements installed inside (not the micro-VM), a
     network allow-list (a network namespace of its own for detain's proxy), `--mount`
     (a mount namespace; `:rw` ones not on the micro-VM, whose inputs are copies), a local
     image (podman, docker), a kernel-side trace (gVisor).
Below that it refuses (fails closed) rather than downgrading. The choice, its reason and
its expected cost go into every Result (`backend_choice`), the summary and `detain doctor`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BackendUnavailable
from . import AUTO_ORDER, BACKENDS, Probe, load

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

# Start-up of one `detain run` with a sandbox started for its job (README, Performance:
# the CLI cold column on a 2-core host), the job itself on top.
COSTS = {"process": 0.3, "restricted": 0.3, "landlock": 0.3, "bwrap": 0.3, "podman": 0.5,
         "docker": 0.9, "gvisor": 0.6, "microvm": 1.2, "venv": 0.1}
EMULATED_COST = ("about 1-3 s a run: the VM is emulated (TCG, no KVM), so restoring it takes "
                 "about a second and the job's own code runs many times slower")
EMULATED = "emulated without KVM, about 1-3 s a run (--backend microvm uses it anyway)"


@dataclass(frozen=True)
class Needs:
    """What a job asks of its backend beyond running Python."""

    requirements: bool = False
    allow_list: bool = False
    mounts: bool = False
    writable_mounts: bool = False
    image: bool = False
    trace: bool = False
    sinkhole: bool = False

    @classmethod
    def of(cls, policy: Any) -> Needs:
        return cls(requirements=policy.wants_packages, allow_list=bool(policy.allow_hosts),
                   mounts=bool(policy.mounts),
                   writable_mounts=any(m.writable for m in policy.mounts),
                   image=policy.image is not None, trace=policy.trace is not None,
                   sinkhole=policy.sinkhole)

    def words(self) -> list[str]:
        """The needs, as the reason line names them."""
        return [word for flag, word in (
            (self.requirements, "requirements"), (self.allow_list, "a network allow-list"),
            (self.writable_mounts, "writable mounts"),
            (self.mounts and not self.writable_mounts, "mounts"),
            (self.image, "a local image"), (self.trace, "a syscall trace"),
            (self.sinkhole, "a sinkhole network")) if flag]

    def unmet(self, name: str) -> str | None:
        """Why backend `name` cannot do what this job needs, or None."""
        entry, backend = BACKENDS[name], load(name)
        if self.allow_list and not getattr(backend, "own_network_namespace", False):
            return "no network namespace of its own for the allow-list proxy"
        if self.sinkhole and not getattr(backend, "sinkhole_network", False):
            return "no sinkhole network (--network sinkhole: bwrap as root)"
        if self.requirements and not entry.requirements:
            return "cannot install requirements"
        if self.mounts and entry.mounts == "none":
            return "no mount namespace for --mount"
        if self.writable_mounts and entry.mounts != "rw":
            return "shows --mount inputs read-only only"
        if self.image and not getattr(backend, "supports_image", False):
            return "cannot run a local image (--image)"
        if self.trace and not (getattr(backend, "supports_trace", False)
                               or getattr(backend, "outside_trace", False)):
            return "cannot be traced (--trace)"
        return None


@dataclass(frozen=True)
class Choice:
    """The backend a run uses, why, and what a run on it costs."""

    backend: str
    level: int
    reason: str
    expected_cost: str

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "level": self.level, "reason": self.reason,
                "expected_cost": self.expected_cost}


def expected_cost(name: str, found: Probe) -> str:
    if emulated(name, found):
        return EMULATED_COST
    return f"about {COSTS.get(name, 1.0):g} s of start-up a run, plus the job's own time"


def emulated(name: str, found: Probe) -> bool:
    return name == "microvm" and dict(found.details).get("accel") != "kvm"


def pick(requested: str, min_level: int, needs: Needs,
         probe: Callable[[str], Probe]) -> Choice:
    """Resolve `auto` (or check a named backend) for a job with `needs`; fail closed."""
    from . import lower_bar_hint

    if requested != "auto":
        entry = BACKENDS[requested]
        if entry.level < min_level:
            raise BackendUnavailable(
                f"backend {requested!r} is level {entry.level}, below the minimum level "
                f"{min_level}; pass --min-level {entry.level} to accept weaker isolation")
        found = probe(requested)
        if not found.available:
            raise BackendUnavailable(f"backend {requested!r} cannot run here: {found.reason}")
        return Choice(requested, entry.level, "asked for by name (--backend or the policy)",
                      expected_cost(requested, found))
    tried, passed = [], []
    for name in AUTO_ORDER:
        entry = BACKENDS[name]
        if entry.level < min_level:
            continue
        found = probe(name)
        why = found.reason if not found.available else (
            EMULATED if emulated(name, found)
            else needs.unmet(name))
        if why is None:
            wanted = needs.words()
            reason = (f"the strongest backend of level >= {min_level} that runs here" + (
                f" and can do what this job needs ({', '.join(wanted)})" if wanted else ""))
            if passed:
                reason += "; passed over " + "; ".join(passed)
            return Choice(name, entry.level, reason, expected_cost(name, found))
        tried.append(f"{name} ({why})")
        if found.available:
            passed.append(f"{name}: {why}")
    hints = [f"{n}: {BACKENDS[n].install_hint}" for n in AUTO_ORDER
             if BACKENDS[n].level >= min_level and BACKENDS[n].install_hint]
    raise BackendUnavailable(
        f"no backend of level >= {min_level} can run here. Tried: {'; '.join(tried)}. "
        f"Install one ({'; '.join(hints[:3])}) or "
        f"{lower_bar_hint(min_level, needs.allow_list)}")
