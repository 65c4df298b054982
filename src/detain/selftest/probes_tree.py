"""Probes of hostile trees and records: what a job leaves must never crash or mislead the host."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..host import rundir
from ..host.copyout import MAX_ENTRIES
from ..report.build import build_report
from ..report.events import MAX_FLAGS
from .bait import Bait
from .model import Attack, NotApplicable, Outcome, probe, program

DEPTH = 2500  # well past Python's recursion limit (1,000), cheap to build on every backend
DIRS = MAX_ENTRIES + 1000  # past the cap; under an emulated CPU (microvm) more take minutes
REPORT_CAP = 2 << 20  # bytes a report may take, whatever the job wrote to the channel


def _result_problem(out: Outcome) -> str | None:
    if out.result is None:
        return f"no Result was written: {out.error}"
    if out.result.error is not None:
        return f"the run became a detain error: {out.result.error}"
    return None


def _leftovers(marker: str) -> list[str]:
    """Run dirs (and set-aside ones) in the state dir still holding the job's tree."""
    base = rundir.base_dir()
    return [entry.name for entry in os.scandir(base)
            if entry.name.startswith(("run-", rundir.STUCK))
            and os.path.lexists(os.path.join(entry.path, "scratch", "out", marker))]


@probe("filesystem", "deep-tree", f"leave a directory chain {DEPTH} levels deep in scratch "
       "and in a --copy-out path, for detain's cleanup, copy-out and sweep to recurse into")
def deep_tree(bait: Bait) -> Attack:
    marker = f"deep-{bait.tag}"
    dest = bait.dir / "copied"
    body = """
    os.makedirs(f'out/{MARKER}')
    fd = os.open(f'out/{MARKER}', os.O_RDONLY)
    for _ in range(DEPTH):
        os.mkdir('d', dir_fd=fd)
        deeper = os.open('d', os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    print('built')
    """

    def check(out: Outcome) -> str | None:
        problem = _result_problem(out)
        if problem is not None:
            return problem
        if not (out.result.copy_out_error or "").count("deeper than"):
            return f"copy-out of the deep tree was not reported: {out.result.copy_out_error}"
        left = _leftovers(marker)
        return f"the run's dir stayed behind: {', '.join(left)}" if left else None

    def next_run(out: Outcome) -> str | None:
        problem = _result_problem(out)
        if problem is None and b"next run works" not in out.result.stdout:
            problem = f"the next run failed: {out.output[-300:]!r}"
        return problem or (f"leftovers after the next run: {_leftovers(marker)}"
                           if _leftovers(marker) else None)

    return Attack(program(bait.tag, body, DEPTH=DEPTH, MARKER=marker), check,
                  settings={"copy_out": [f"out:{dest}"], "timeout": 60},
                  follow_up=Attack(program(bait.tag, "print('next run works')\n"), next_run))


@probe("filesystem", "copy-out-dir-flood", f"make {DIRS} empty directories in a --copy-out "
       "path, for the host to recreate them all")
def copy_out_dir_flood(bait: Bait) -> Attack:
    dest = bait.dir / "copied"
    body = """
    os.mkdir('out')
    for number in range(DIRS):
        os.mkdir(f'out/{number}')
    print('made')
    """

    def check(out: Outcome) -> str | None:
        problem = _result_problem(out)
        if problem is not None:
            return problem
        if out.result.timed_out:
            raise NotApplicable(f"the job could not make {DIRS} directories within its "
                                "time limit here")
        made = sum(len(dirs) for _, dirs, _ in os.walk(dest))
        if made > MAX_ENTRIES:
            return f"copy-out created {made} directories on the host (cap {MAX_ENTRIES})"
        if made == DIRS or "too many entries" not in (out.result.copy_out_error or ""):
            return f"the entry cap was not reported: {out.result.copy_out_error}"
        return None

    return Attack(program(bait.tag, body, DIRS=DIRS), check,
                  settings={"copy_out": [f"out:{dest}"], "timeout": 90})


@probe("filesystem", "copy-out-exec-overwrite", "copy out a file over an executable the "
       "caller keeps in HOST_DIR, to inherit its execute bits")
def copy_out_exec_overwrite(bait: Bait) -> Attack:
    dest = bait.dir / "copied"
    tool = bait.file("copied/tool", "#!/bin/sh\necho caller's tool\n", mode=0o755)
    before = os.stat(tool).st_ino
    body = """
    os.mkdir('out')
    with open('out/tool', 'w') as handle:
        handle.write('#!/bin/sh\\necho the job ran here\\n')
    os.chmod('out/tool', 0o4755)
    """

    def check(out: Outcome) -> str | None:
        problem = _result_problem(out)
        if problem is not None:
            return problem
        info = os.lstat(tool)
        if not stat.S_ISREG(info.st_mode) or b"the job" not in Path(tool).read_bytes():
            return "copy-out did not replace the file"
        if info.st_mode & 0o7111:
            return f"the job's file arrived executable on the host ({oct(info.st_mode)})"
        if info.st_ino == before:
            return "copy-out wrote into the caller's existing file instead of a fresh one"
        return None

    return Attack(program(bait.tag, body), check, settings={"copy_out": [f"out:{dest}"]})


@probe("python", "channel-malformed-flood", "write 4 MiB of malformed records to the event "
       "channel, one integrity flag each, to swell the report and detain's memory")
def channel_malformed_flood(bait: Bait) -> Attack:
    body = """
    import gc
    fd = next(o for o in gc.get_objects() if type(o).__name__ == 'Auditor').fd
    chunk = b'{"type":1}\\n' * 4096
    for _ in range((4 << 20) // len(chunk)):
        os.write(fd, chunk)
    print('flooded')
    """

    def check(out: Outcome) -> str | None:
        problem = _result_problem(out)
        if problem is not None:
            return problem
        integrity = out.result.behaviour.get("integrity", {})
        listed = len(integrity.get("flags", []))
        if listed > MAX_FLAGS + 5:
            return f"{listed} integrity flags listed one by one (cap {MAX_FLAGS})"
        size = len(json.dumps(build_report(out.result)))
        if size > REPORT_CAP:
            return f"the report took {size} bytes"
        if integrity.get("flags_total", 0) < 1000:
            return f"the flood was not counted: {integrity.get('flags_total')} flag(s)"
        return None

    return Attack(program(bait.tag, body), check, settings={"timeout": 60})
