"""Resource probes: each limit is judged by what the host measured, never by the job."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import hostview
from .bait import Bait
from .model import Attack, Outcome, probe, program
from .probes_proc import count_check

MIB = 1 << 20
CHILDREN = 12
REFUSED = "--limits-scope per-process"  # what a refused total names as the alternative


# What a job holds: its anonymous and shared-memory pages. File pages (the interpreter and
# its libraries) are shared with the host and charged wherever they were first read.
HELD_STATUS = ("RssAnon:", "RssShmem:")
HELD_ROLLUP = ("Pss_Anon:", "Pss_Shmem:")


def _rss(procs: list[hostview.Proc]) -> int:
    total = 0
    for proc in procs:
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) * 1024 for line in text.splitlines()
                     if line.startswith(HELD_STATUS))
    return total


def pss_total(procs: list[hostview.Proc]) -> int:
    """The memory the processes hold together: shared pages counted once (PSS), as a
    cgroup charges them, not once per process as RSS would; anonymous and shared memory
    (memfd, /dev/shm) only, see HELD_ROLLUP."""
    total = 0
    for proc in procs:
        try:
            text = Path(f"/proc/{proc.pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) * 1024 for line in text.splitlines()
                     if line.startswith(HELD_ROLLUP))
    return total


class Peak:
    """The highest value `measure` gives over the job's live processes, sampled by a host
    thread for the whole run: a job the host ends early is judged by what it held."""

    def __init__(self, tag: str, measure: Callable[[list[hostview.Proc]], int],
                 seconds: float = 60.0) -> None:
        self.peak = 0
        self.seen = False  # whether any job process was visible to the host at all
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(tag, measure, seconds),
                                        daemon=True)
        self._thread.start()

    def _sample(self, tag: str, measure, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.wait(0.02) and time.monotonic() < deadline:
            procs = [p for p in hostview.job_processes(tag) if p.alive]
            if procs:
                self.seen = True
                self.peak = max(self.peak, measure(procs))

    def stop(self, out: Outcome | None = None) -> int:
        """The peak; with the run's outcome, n/a when the host never saw the job's
        processes (another kernel's) unless the run was refused before any existed."""
        self._stop.set()
        self._thread.join()
        if out is not None and not self.seen and not _refused(out):
            hostview.seen([])
        return self.peak


def scratch_bytes(procs: list[hostview.Proc]) -> int:
    """The job's scratch dir (its working directory on every backend), measured through
    /proc on the host, never following a link of the job's."""
    return max((hostview.tree_bytes(f"/proc/{p.pid}/cwd/.") for p in procs[:1]), default=0)


def _refused(out: Outcome) -> bool:
    return out.result is None and REFUSED in (out.error or "")


@probe("resources", "memory-total", f"{CHILDREN} forked processes each hold 24 MiB under a "
       "64 MiB memory limit (a total, not a per-process cap)", dangerous=True)
def memory_total(bait: Bait) -> Attack:
    limit = 64 * MIB
    body = """
    import select, time
    read_end, write_end = os.pipe()
    for _ in range(CHILDREN):
        if os.fork() == 0:
            os.close(read_end)
            try:
                held = bytearray(24 << 20)
                for offset in range(0, len(held), 4096):
                    held[offset] = 1
                os.write(write_end, b'1')
            except MemoryError:
                os._exit(3)
            time.sleep(30)
            os._exit(0)
    os.close(write_end)
    got, deadline = 0, time.monotonic() + 4
    while got < CHILDREN and time.monotonic() < deadline:
        if select.select([read_end], [], [], deadline - time.monotonic())[0]:
            chunk = os.read(read_end, 64)
            if not chunk:
                break
            got += len(chunk)
    ready()
    """
    peak = Peak(bait.tag, pss_total)

    def check(out: Outcome) -> str | None:
        if _refused(out):
            peak.stop()
            return None
        # Where a cgroup holds the run, the kernel's own peak count is the judge: summing
        # the processes' pages one after another races with the OOM killer and new
        # allocations, and counted one run's 64 MiB as 147. Without one, the sum is all
        # the host has.
        kernel = out.result.peak_memory_bytes if out.result and out.result.assurance.get(
            "cgroup") else 0
        sampled = peak.stop() if kernel else peak.stop(out)
        held = kernel or sampled
        if held > limit * 1.25:
            return f"{CHILDREN} processes held {held // MIB} MiB together under a " \
                   f"{limit // MIB} MiB limit"
        return None
    return Attack(program(bait.tag, body, wait=True, CHILDREN=CHILDREN), check,
                  settings={"memory": "64M", "timeout": 30})


def _disk_total(bait: Bait, settings: dict) -> Attack:
    """12 processes write 8 files of 1 MiB each into scratch under an 8 MiB cap: contained
    when the run is refused or scratch never held more than the cap (plus a block's slack),
    as the host sees it through the job's working directory."""
    cap = 8 * MIB
    body = """
    block = b'x' * (1 << 20)
    kids = []
    for number in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            try:
                os.mkdir('fill-%d' % number)
                for part in range(8):
                    with open('fill-%d/%d' % (number, part), 'wb') as handle:
                        handle.write(block)
            except OSError:
                os._exit(1)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    ready()
    """
    peak = Peak(bait.tag, scratch_bytes)

    def check(out: Outcome) -> str | None:
        held = peak.stop(out)
        if _refused(out) or held <= cap + MIB:
            return None
        return f"the job held {held // MIB} MiB in scratch under an {cap // MIB} MiB disk cap"
    return Attack(program(bait.tag, body, wait=True, CHILDREN=CHILDREN), check,
                  settings={"disk": "8M", "timeout": 30, **settings})


@probe("resources", "disk-total", f"{CHILDREN} forked processes write 8 files of 1 MiB "
       "each into scratch under an 8 MiB disk cap (a total, not a per-file cap)",
       dangerous=True)
def disk_total(bait: Bait) -> Attack:
    return _disk_total(bait, {})


@probe("resources", "disk-total-copy-out", "the same with --copy-out, so scratch must stay "
       "readable by the host after the run", dangerous=True)
def disk_total_copy_out(bait: Bait) -> Attack:
    return _disk_total(bait, {"copy_out": [f"fill-0:{bait.subdir('out')}"]})


@probe("resources", "memory", "allocate 1 GiB under a 128 MiB memory limit", dangerous=True)
def memory(bait: Bait) -> Attack:
    limit = 128 * MIB
    body = """
    blocks = []
    for _ in range(128):
        blocks.append(b'x' * (8 << 20))
    ready()
    """

    def observe() -> int:
        return _rss(hostview.job_processes(bait.tag))

    def check(out: Outcome) -> str | None:
        peak = max(out.observed or 0, out.result.peak_memory_bytes if out.result else 0)
        if peak > limit * 1.25:
            return f"the job held {peak // MIB} MiB under a {limit // MIB} MiB limit"
        return None
    return Attack(program(bait.tag, body, wait=True), check,
                  settings={"memory": "128M", "timeout": 20}, observe=observe)


@probe("resources", "cpu", "spin under a 1 s CPU-time limit")
def cpu(bait: Bait) -> Attack:
    def check(out: Outcome) -> str | None:
        if out.result is None:
            return None
        if out.result.timed_out:
            return "the CPU limit never stopped the job (only the wall clock did)"
        # The limit counts from the job's start (the interpreter's own start-up is added,
        # rounded up to whole seconds) and SIGKILL follows 1 s after SIGXCPU.
        if out.result.cpu_seconds > 4:
            return f"the job used {out.result.cpu_seconds:.1f} s of CPU under a 1 s limit"
        return None
    return Attack(program(bait.tag, "while True:\n    pass\n"), check,
                  settings={"cpu": 1, "timeout": 15})


@probe("resources", "disk", "fill /tmp and /dev/shm past a 4 MiB disk cap, one file at a "
       "time (each under the per-file limit; scratch: disk-total)")
def disk(bait: Bait) -> Attack:
    cap = 4 * MIB
    places = [f"/tmp/fill-{bait.tag}", f"/dev/shm/fill-{bait.tag}"]
    cleanup = bait.canaries(places)
    body = """
    block = b'x' * (1 << 20)
    for place in PLACES:
        try:
            os.mkdir(place)
            for number in range(12):
                with open('%s/%d' % (place, number), 'wb') as handle:
                    for _ in range(3):
                        handle.write(block)
        except OSError as exc:
            print(place, type(exc).__name__)
    ready()
    """

    def observe() -> dict[str, int]:
        procs = [p for p in hostview.job_processes(bait.tag) if p.alive]
        if not procs:
            return {}
        root = f"/proc/{procs[0].pid}/root"
        return {place: hostview.tree_bytes(Path(root + place)) for place in places}

    def check(out: Outcome) -> str | None:
        cleanup()
        if out.observed is not None and not out.observed:
            hostview.seen([])
        over = {p: size for p, size in (out.observed or {}).items() if size > cap + MIB}
        if over:
            return "beyond the disk cap: " + ", ".join(f"{p} {s // MIB} MiB"
                                                       for p, s in over.items())
        return None
    return Attack(program(bait.tag, body, wait=True, PLACES=places), check,
                  settings={"disk": "4M", "timeout": 20}, observe=observe)


@probe("resources", "open-files", "open 10,000 files under a limit of 64, and raise the limit")
def open_files(bait: Bait) -> Attack:
    body = """
    import resource
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))
    except (OSError, ValueError) as exc:
        print('setrlimit', type(exc).__name__)
    held = []
    for _ in range(10000):
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    ready()
    """

    def observe() -> list[tuple[hostview.Proc, int]]:
        return [(p, len(hostview.fd_targets(p.pid))) for p in hostview.job_processes(bait.tag)]

    def check(out: Outcome) -> str | None:
        most = max((count for _, count in hostview.seen(out.observed)), default=0)
        return f"a job process held {most} files under a limit of 64" if most > 64 else None
    return Attack(program(bait.tag, body, wait=True), check,
                  settings={"open_files": 64}, observe=observe)


def _output_check(cap: int):
    def check(out: Outcome) -> str | None:
        if out.result is None:
            return None
        sizes = (len(out.result.stdout), len(out.result.stderr))
        if max(sizes) > cap + 200:
            return f"{max(sizes)} bytes of output kept under a cap of {cap}"
        if out.wall > 30:
            return f"the flood held detain for {out.wall:.0f} s"
        return None
    return check


@probe("resources", "output-flood", "write 256 MiB to stdout and stderr at full speed",
       dangerous=True)
def output_flood(bait: Bait) -> Attack:
    body = """
    block = b'y' * (1 << 20)
    for _ in range(128):
        sys.stdout.buffer.write(block)
        sys.stderr.buffer.write(block)
    """
    return Attack(program(bait.tag, body), _output_check(MIB),
                  settings={"output": "1M", "timeout": 30})


@probe("resources", "huge-line", "print one 16 MiB line without a newline")
def huge_line(bait: Bait) -> Attack:
    body = "sys.stdout.buffer.write(b'z' * (16 << 20))\n"
    return Attack(program(bait.tag, body), _output_check(MIB),
                  settings={"output": "1M", "timeout": 20})


@probe("resources", "zombie-pile", "pile up unreaped children until the process table is "
       "full", dangerous=True)
def zombie_pile(bait: Bait) -> Attack:
    body = """
    for _ in range(5000):
        try:
            if os.fork() == 0:
                os._exit(0)
        except OSError:
            break
    ready()
    """
    return Attack(program(bait.tag, body, wait=True), count_check(32),
                  settings={"processes": 32, "timeout": 15},
                  observe=hostview.watcher(bait.tag))
