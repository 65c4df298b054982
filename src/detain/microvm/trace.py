"""`--trace` on the micro-VM: the outside tracer (host/tracer_main.py) inside the guest.

A host tracer cannot follow the job here: the job's processes are the guest kernel's, and
QEMU is all the host sees. So the same tracer program runs inside the guest, started by
the guest init (microvm/guest_init.py, PID 1, root) in a VM saved for traced runs (the
boot message says so; a traced VM is another saved VM, so untraced runs pay nothing):
  * the init starts the tracer as guest root, in the guest's root cgroup, then forks the
    job's process; that process, before it drops to the sandbox uid's seccomp filter and
    execs the launcher, hands the tracer its pid and waits until the tracer has seized it
    (PTRACE_SEIZE with EXITKILL), then loads the filter that stops the traced syscalls
    (host/tracer.py builds it on the host; the guest runs the host's architecture) and
    the sandbox's own. No go from the tracer: the job's process never starts.
  * out of the job's reach: the job runs as the unprivileged sandbox uid (1000), the
    tracer as root, so the job can neither signal nor ptrace it, nor read its memory or
    descriptors (/proc/PID/fd, mem: ptrace access checks); it is outside the job's
    cgroup, so the run's cgroup kill, memory and pids limits do not touch it. Were it to
    die anyway, every tracee dies with it (EXITKILL): the job cannot run on untraced.
  * the records go to a memfd only the init and the tracer hold, never a file the job
    could open; the tracer flushes each record and the init forwards them, at most
    TRACE_CAP bytes, on a root-only virtio port the job cannot open, as they come (a job
    that outlasts its time limit, when the host ends QEMU, still leaves what was traced
    until then; its trace is then flagged as cut short) and, once the job and all it
    started have ended, up to the tracer's closing record. The host reads that port
    capped, as hostile data, and merges the records through report/outside_trace.py
    like bwrap's: the job's strings are only ever inside JSON strings the tracer wrote.
"""

from __future__ import annotations

from typing import Any

from ..host.supervise import Capture
from ..host.tracer import HEADER, TRACE_CAP, capped_text, filter_path, tracer_arguments
from .image import GUEST_TRACER

END_SECONDS = 5.0  # the init waits this long for the tracer's closing record


def boot_config(python: str) -> tuple[dict[str, Any], bytes]:
    """What the guest init needs to start the tracer (its command, which the init's fds
    then the arguments follow; the records' header; the byte cap) and the filter the
    job's process loads once seized."""
    config = {"command": [python, "-I", "-S", GUEST_TRACER, "/detain"],
              "arguments": [*tracer_arguments(), "1"], "header": HEADER, "cap": TRACE_CAP,
              "wait": END_SECONDS}
    return config, filter_path().read_bytes()


class GuestTrace:
    """The host's side of a guest tracer: the records as they came off the trace port.
    It stands where a host backend keeps its OutsideTrace (Started.tracer)."""

    def __init__(self) -> None:
        # One byte over the cap: past it, capped_text drops the record cut in two.
        self.capture = Capture("trace", TRACE_CAP + 1)

    def feed(self, chunk: bytes) -> None:
        self.capture.feed(chunk)

    def started(self) -> None:
        """Nothing to hand over: the guest init started the tracer before the VM's save."""

    def collect(self) -> str:
        return capped_text(bytes(self.capture.data[:TRACE_CAP + 1]))

    def close(self) -> None:
        """Nothing to end: the tracer ended with the VM."""
