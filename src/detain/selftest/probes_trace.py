"""Probes of what the outside tracer tells the report, not of containment: a job that
hides a Python from the audit hook, or passes a program it wrote for a build tool, must
still be named for it. An escape here is a deed the report calls ordinary.

Run with the outside trace (`trace = "syscalls"`); a backend that has none refuses it, and
the probe does not apply there. Judged from the report the host builds from the run."""

from __future__ import annotations

from ..report.kernel_trace import PYTHON_NAME
from .model import Attack, NotApplicable, Outcome, probe, program

RAN = "DETAIN-SELFTEST-TRACE-RAN"
TRACED = {"trace": "syscalls"}


def _report(outcome: Outcome) -> dict:
    from ..report.build import build_report

    if outcome.result is None:
        raise NotApplicable(f"no outside trace here ({(outcome.error or '?')[:120]})")
    if RAN.encode() not in outcome.result.stdout:
        raise NotApplicable("the job did not get to run the evasion here")
    return build_report(outcome.result)


@probe("python", "trace-python-without-hook", "start a Python with -S (no site, so none "
       "of detain's audit hook) to do what the hook would have reported")
def python_without_hook(bait) -> Attack:
    body = f"""
    import subprocess
    subprocess.run([sys.executable, "-S", "-c", "import os; os.environ.get('HOME')"],
                   check=True)
    print({RAN!r})
    """

    def check(outcome: Outcome) -> str | None:
        execs = [e for e in _report(outcome)["events"] if e["event"] == "kernel.execve"
                 and PYTHON_NAME.match(str(e["detail"].get("target")).rsplit("/", 1)[-1])]
        if not execs:
            return "the -S Python's exec is not in the report"
        if not all(e["detail"].get("unhooked") for e in execs):
            return "the -S Python is not marked as running without detain's audit hook"
        return None
    return Attack(program(bait.tag, body), check, settings=TRACED)


@probe("python", "trace-dropped-build-tool", "copy a program to ./gcc and run it, so that "
       "it passes for a compiler the build started")
def dropped_build_tool(bait) -> Attack:
    body = f"""
    import shutil, subprocess
    tool = os.path.abspath("gcc")
    shutil.copy("/bin/true", tool)
    subprocess.run([tool], check=True)
    print({RAN!r})
    """

    def check(outcome: Outcome) -> str | None:
        reasons = " | ".join(_report(outcome)["verdict"]["reasons"])
        if "process started" not in reasons or "gcc" not in reasons:
            return f"the dropped gcc is not a process started in the verdict ({reasons[:200]})"
        return None
    return Attack(program(bait.tag, body), check, settings=TRACED)
