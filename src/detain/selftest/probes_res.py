"""Resource probes: each limit is judged by what the host measured, never by the job."""

from __future__ import annotations

from pathlib import Path

from . import hostview
from .bait import Bait
from .model import Attack, Outcome, probe, program
from .probes_proc import count_check

MIB = 1 << 20


def _rss(procs: list[hostview.Proc]) -> int:
    total = 0
    for proc in procs:
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


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


@probe("resources", "disk", "fill scratch, /tmp and /dev/shm past a 4 MiB disk cap, one "
       "file at a time (each under the per-file limit)")
def disk(bait: Bait) -> Attack:
    cap = 4 * MIB
    places = ["/scratch/fill", f"/tmp/fill-{bait.tag}", f"/dev/shm/fill-{bait.tag}"]
    cleanup = bait.canaries(places[1:])
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
