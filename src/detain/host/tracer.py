"""Observation from outside the job's processes: a per-run ptrace tracer (host/tracer_main.py).

The audit hook sees what the job's own interpreter reports, in the job's own process: pip's
build subprocess, `sh`, `curl` and native code are outside it, and the job could forge or
silence it. This tracer is a separate process detain starts before the sandbox, outside
the job's reach: as root it runs as root while the job runs as the run's uid; unprivileged,
bwrap's pid and user namespaces hide it, and on landlock the job's Landlock domain may
neither signal nor ptrace a process outside it (signal scoping, ABI 6, which the landlock
backend requires unprivileged). If it dies anyway, every tracee dies with it
(PTRACE_O_EXITKILL): the job cannot run on untraced. In a micro-VM the same program
(tracer_main.py, stdlib only) runs inside the guest instead: microvm/trace.py.

How it is joined, in the sandbox process's fork-exec step (the last ChildSetup step, after
the uid drop and the backend's own confinement): the process writes its pid to the
tracer, waits until the tracer has seized it, then loads a seccomp filter that returns
SECCOMP_RET_TRACE for the syscalls reported (everything else runs without a stop, which
keeps the cost low), and execs. From then on every process and thread is followed.

Chosen over strace (measured on `pip install six`: strace -f stops on every syscall,
2-3.5x; its --seccomp-bpf mode needs strace to start the command itself, so it would run
as the job's uid or inside its confinement) and over parsing any text: the tracer writes
JSON records, every string of the job's inside a JSON string, capped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import ProtectionError
from ..report.events import SENSITIVE
from ..report.verdict import PERSISTENCE_MARKS
from . import seccomp
from .privileges import _check, _libc
from .tools import trusted_cache_dir
from .warden import BOOT, SOURCE_ROOT

# What every CPython opens as it starts, even under -S -I (encodings is not frozen): kept in
# reserve too, so that no flood hides that a process is a Python interpreter, renamed or not
# (report/outside_trace.py tells a Python without detain's audit hook by it).
INTERPRETER_START = ("/encodings/__init__.py", "/encodings/__pycache__/__init__.")
ENVIRONS = ("/environ",)  # any process's /proc/PID[/task/TID]/environ, in reserve too
TRACED = ("execve", "execveat", "open", "openat", "openat2", "creat", "connect", "sendto",
          "sendmsg", "bind", "listen", "unlink", "unlinkat", "rename", "renameat",
          "renameat2", "chmod", "fchmodat", "mkdir", "mkdirat", "symlink", "symlinkat",
          "link", "linkat")
MAX_RECORDS = 20000
RESERVE = 1000  # of them, kept each for execs, connections and sensitive opens
STRING_CAP = 512
TRACE_CAP = 16 << 20  # bytes of records read back (MAX_RECORDS records fit well under it)
END_SECONDS = 10.0
HEADER = '{"type":"outside-trace","version":1}'
PR_SET_NO_NEW_PRIVS, PR_SET_PTRACER = 38, 0x59616D61
O_DIRECTORY = 0o200000
FLAGS_ARG = {"open": 1, "openat": 2}  # where the open flags are
TRACER_BOOT = BOOT.replace("warden_main", "tracer_main")


@functools.cache
def syscall_numbers() -> dict[str, int]:
    """This architecture's numbers for the traced syscalls (libseccomp knows them)."""
    import pyseccomp

    numbers = {}
    for name in TRACED:
        try:
            number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        except (ValueError, RuntimeError, OSError):
            continue
        if isinstance(number, int) and number >= 0:
            numbers[name] = number
    return numbers


def filter_path() -> Path:
    """The compiled filter stopping the traced syscalls for the tracer, built on first use.

    Syscalls of another ABI (i386, x32) fall to libseccomp's default for a foreign
    architecture, which kills the process: nothing runs past the filter unseen."""
    digest = hashlib.sha256(repr(sorted(syscall_numbers().items())).encode()
                            + Path(__file__).read_bytes()).hexdigest()[:16]
    path = trusted_cache_dir() / f"trace-{digest}.bpf"
    if path.is_file() and path.stat().st_size > 0:
        return path
    try:
        import pyseccomp
    except ImportError as exc:
        raise ProtectionError(f"the outside trace needs pyseccomp and libseccomp ({exc}); "
                              "install libseccomp2 (apt) or reinstall detain") from None
    filt = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in syscall_numbers():
        if name in FLAGS_ARG:  # a directory listed is not reported: no stop for it
            arg = pyseccomp.Arg(FLAGS_ARG[name], pyseccomp.MASKED_EQ, O_DIRECTORY, 0)
            filt.add_rule(pyseccomp.TRACE(0), name, arg)
        else:
            filt.add_rule(pyseccomp.TRACE(0), name)
    seccomp.export(filt, path)
    return path


class OutsideTrace:
    """One run's tracer: started before the sandbox process, joined in its fork-exec step
    (`child_step`), read back once the run is over (`collect`)."""

    def __init__(self, run_dir: Path, machinery: str | None) -> None:
        self.path = run_dir / "outside-trace.jsonl"
        out = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        request_read, go_write = self._handshake(run_dir)
        try:
            os.write(out, (HEADER + "\n").encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", TRACER_BOOT, SOURCE_ROOT, str(out),
                 str(request_read), str(go_write), *tracer_arguments(machinery)],
                env={}, pass_fds=(out, request_read, go_write), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except BaseException:
            for fd in (self._request, self._go):
                os.close(fd)
            raise
        finally:
            for fd in (out, request_read, go_write):
                os.close(fd)
        _libc()  # loaded here: the child's step must not import

    def _handshake(self, run_dir: Path) -> tuple[int, int]:
        """The tracer's ends of the handshake (the pid it is to seize comes in on the
        first, it answers on the second); the other ends are kept for the sandbox
        process, which inherits them."""
        self.program = seccomp.Program(filter_path())
        request_read, self._request = os.pipe()
        self._go, go_write = os.pipe()
        return request_read, go_write

    def child_step(self) -> None:
        """In the sandbox process, between fork and exec: be seized, then load the filter.
        Without the tracer's go, the process refuses to start (exit 126)."""
        libc = _libc()
        libc.prctl(PR_SET_PTRACER, self.proc.pid, 0, 0, 0)  # Yama, where it is on
        try:
            os.write(self._request, f"{os.getpid()}\n".encode())
            ready = os.read(self._go, 1) == b"1"
            if ready:
                _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
                self.program.install()
        except OSError:
            ready = False
        if not ready:
            os.write(2, b"detain: the outside tracer could not attach to the sandbox\n")
            os._exit(126)

    def started(self) -> None:
        """Once the sandbox process exists, its ends of the handshake are its own."""
        self._close_handshake()

    def _close_handshake(self) -> None:
        for fd in (self._request, self._go):
            if fd >= 0:
                os.close(fd)
        self._request = self._go = -1

    def collect(self) -> str:
        """The raw records, once the tracer has followed the last tracee out; capped."""
        self._close_handshake()
        try:
            self.proc.wait(timeout=END_SECONDS)
        except subprocess.TimeoutExpired:
            self.close()
        with open(self.path, "rb") as handle:
            return capped_text(handle.read(TRACE_CAP + 1))

    def close(self) -> None:
        """End the tracer if it is still there (its tracees die with it) and reap it."""
        self._close_handshake()
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()


def capped_text(data: bytes) -> str:
    """Records as read back (at most TRACE_CAP bytes are taken): a record the cap cut in
    two is dropped whole, so the missing closing record says the trace was cut."""
    text = data[:TRACE_CAP].decode("utf-8", "backslashreplace")
    if len(data) > TRACE_CAP:
        text = text[:text.rfind("\n") + 1]
    return text


def tracer_arguments(machinery: str | None = None) -> list[str]:
    """tracer_main's arguments after its fds: MAX_RECORDS RESERVE STRING_CAP MACHINERY
    NR=NAME,... SENSITIVE. Also what a micro-VM's init passes to the tracer it starts
    inside the guest (microvm/guest_init.py), whose first process is the job's."""
    table = ",".join(f"{nr}={name}" for name, nr in syscall_numbers().items())
    return [str(MAX_RECORDS), str(RESERVE), str(STRING_CAP), machinery or "-", table,
            json.dumps(SENSITIVE + ENVIRONS + PERSISTENCE_MARKS + INTERPRETER_START)]


def usable() -> str | None:
    """Why the outside trace cannot run on this host, or None."""
    try:
        syscall_numbers()
    except ImportError as exc:
        return f"the outside trace needs pyseccomp ({exc})"
    if not syscall_numbers():
        return "libseccomp knows none of the traced syscalls on this architecture"
    return None



def on_by_default(policy):
    """`policy` with the outside trace on where the backend it resolves to has the tracer
    (detain package, detain pytest); a trace the caller set is kept as it is."""
    from dataclasses import replace

    from ..backends import choose

    if policy.trace is not None:
        return policy
    backend = choose(policy.backend, policy.min_level, egress=bool(policy.allow_hosts))
    return replace(policy, trace="syscalls") if backend.outside_trace else policy
