"""Probes of what the in-process audit hook sees, not of containment: a job that reads a
credential or forges where its code comes from must still be in the report. An escape
here is a deed the report does not show (or shows as the standard library's).

Judged from the run's own events (the report the host built), which the job could forge
but not remove: a job that hid its deed leaves no event naming it."""

from __future__ import annotations

from typing import Any

from .bait import Bait
from .model import Attack, NotApplicable, Outcome, probe, program

RAN = "DETAIN-SELFTEST-EVASION-RAN"
VARIABLE = "DETAIN_SELFTEST_API_KEY"  # credential-looking by its name


def _events(outcome: Outcome) -> list[dict[str, Any]]:
    """The run's events, once the job is known to have run the evasion (RestrictedPython
    refuses `__code__` and `posix`: nothing to judge there)."""
    if outcome.result is None or RAN.encode() not in outcome.result.stdout:
        raise NotApplicable("the job did not get to run the evasion here")
    if not outcome.result.behaviour.get("audit"):
        raise NotApplicable("no audit hook in this run")
    return outcome.result.behaviour.get("events") or []


@probe("python", "hook-environ-bypass", "read a credential variable through posix.environ, "
       "os.environ._data and os.environb instead of os.environ, unseen by the audit hook")
def hook_environ_bypass(bait: Bait) -> Attack:
    body = f"""
    import posix
    reads = 0
    for mapping, key in ((posix.environ, NAME.encode()), (os.environ._data, NAME.encode()),
                         (os.environb, NAME.encode())):
        reads += mapping.get(key) == SECRET.encode()
    print({RAN!r}, reads)
    """

    def check(outcome: Outcome) -> str | None:
        seen = [e for e in _events(outcome) if e["event"] == "os.environ.get"
                and e["detail"].get("name") == VARIABLE]
        if len(seen) < 3:
            return f"{3 - len(seen)} of 3 raw reads of {VARIABLE} made no event"
        return None
    return Attack(program(bait.tag, body, NAME=VARIABLE, SECRET=bait.secret), check,
                  settings={"env": {VARIABLE: bait.secret}})


@probe("python", "hook-code-forgery", "run a function whose code object claims to be the "
       "stdlib's json module, in a thread, so its file read passes for the stdlib's")
def hook_code_forgery(bait: Bait) -> Attack:
    target = f"detain-selftest-forged-{bait.tag}"  # in the job's own working dir
    body = f"""
    import json, threading
    def deed():
        open(TARGET, "w").close()
    deed.__code__ = deed.__code__.replace(co_filename=json.__file__)
    worker = threading.Thread(target=deed)
    try:
        worker.start()
        worker.join()
    except RuntimeError:  # no thread allowed here (gVisor's task limit): run it plainly
        deed()
    print({RAN!r})
    """

    def check(outcome: Outcome) -> str | None:
        events = _events(outcome)
        if not any(e["event"] == "code.forged" for e in events):
            return "code made under the json module's name made no code.forged event"
        written = [e for e in events if e["event"] == "open" and e["detail"].get("path") == target]
        if not written:
            return "the forged function's file write made no event"
        if "json" in str(written[0].get("file")):
            return f"the forged function's write was shown as {written[0].get('file')}'s"
        return None
    return Attack(program(bait.tag, body, TARGET=target), check)


@probe("python", "hook-gc-environ", "read the environment's values through the garbage "
       "collector (gc.get_referents(posix.environ)), around the auditing dict's methods")
def hook_gc_environ(bait: Bait) -> Attack:
    body = f"""
    import gc, posix
    values = gc.get_referents(posix.environ)
    print({RAN!r}, len(values))
    """

    def check(outcome: Outcome) -> str | None:
        if not any(e["event"] == "gc.get_referents" for e in _events(outcome)):
            return "reading the environment through gc made no event"
        return None
    return Attack(program(bait.tag, body), check, settings={"env": {VARIABLE: bait.secret}})


@probe("python", "hook-written-module", "write a module into a dir named site-packages, "
       "import it and read a credential variable there, so the read passes for a "
       "dependency's")
def hook_written_module(bait: Bait) -> Attack:
    module = "helper_" + "".join(c if c.isalnum() else "_" for c in bait.tag)
    body = f"""
    os.makedirs("lib/site-packages", exist_ok=True)
    with open("lib/site-packages/{module}.py", "w") as f:
        f.write("import os" + chr(10) + "def grab():" + chr(10)
                + "    return os.environ.get(" + repr(NAME) + ")" + chr(10))
    sys.path.insert(0, os.path.abspath("lib/site-packages"))
    __import__("{module}").grab()
    print({RAN!r})
    """

    def check(outcome: Outcome) -> str | None:
        if not any(e["event"] == "os.environ.get" and e["detail"].get("name") == VARIABLE
                   for e in _events(outcome)):
            return "the read in a module the job wrote under site-packages made no event"
        return None
    return Attack(program(bait.tag, body, NAME=VARIABLE), check,
                  settings={"env": {VARIABLE: bait.secret}})
