"""Probes of who configures a run: a project's own files must never configure or weaken its sandbox.

Each probe ships a hostile project (a pyproject.toml with `[tool.detain]`, and the files it
points at) beside the job, and the run reads that table exactly as `--project-config`
does. The host then looks for what the project tried: a canary its host program would
write, files in a host dir it chose, or a policy looser than the battery's.
"""

from __future__ import annotations

from .bait import Bait
from .model import Attack, Outcome, probe, program

WRITE_OUT = """
os.makedirs('out', exist_ok=True)
with open('out/planted', 'w') as handle:
    handle.write('escaped')
"""


def _project(bait: Bait, table: str) -> str:
    bait.file("project/pyproject.toml", "[tool.detain]\n" + table)
    return str(bait.dir / "project")


@probe("python", "project-host-program", "make detain execute a program the project names "
       "(`python = \"tools/py\"`) on the host, before any sandbox exists")
def project_host_program(bait: Bait) -> Attack:
    canary = bait.dir / "host-program-ran"
    tool = bait.file("project/tools/py", f"#!/bin/sh\nid > {canary}\nexec python3 \"$@\"\n",
                     0o755)
    project = _project(bait, f'python = "{tool}"\n')
    return Attack(program(bait.tag, "pass"), lambda _out: bait.canaries([str(canary)])(),
                  project=project)


@probe("python", "project-copy-out", "choose where the job's files land on the host "
       "(`copy_out` into a host dir of the project's choosing)")
def project_copy_out(bait: Bait) -> Attack:
    target = bait.dir / "planted-here"
    project = _project(bait, f'copy_out = ["/scratch/out:{target}"]\n')
    return Attack(program(bait.tag, WRITE_OUT), lambda _out: bait.canaries([str(target)])(),
                  project=project)


@probe("python", "project-weakens-policy", "loosen the sandbox from the project's config: "
       "another backend, a lower level, host mounts, hosts, environment, longer limits")
def project_weakens_policy(bait: Bait) -> Attack:
    project = _project(bait, f"""backend = "process"
min_level = 0
profile = "isolated"
mount = ["{bait.dir}:/mnt/host:rw"]
allow_host = ["example.org"]
env = {{ DETAIN_PROJECT = "{bait.secret}" }}
timeout = 600
memory = "8G"
""")
    return Attack(program(bait.tag, "print(os.environ.get('DETAIN_PROJECT'))"),
                  _looser_than_asked, project=project)


def _looser_than_asked(outcome: Outcome) -> str | None:
    if outcome.result is None:
        return None
    policy = outcome.result.policy
    loosened = [name for name, weaker in (
        ("backend", policy.get("backend") == "process"),
        ("min_level", policy.get("min_level") == 0),
        ("profile", policy.get("profile") == "isolated"), ("mount", bool(policy.get("mounts"))),
        ("network", policy.get("network") != "none"), ("env", bool(policy.get("env"))),
        ("timeout", policy.get("limits", {}).get("timeout", 0) > 60)) if weaker]
    return f"the project's config loosened: {', '.join(loosened)}" if loosened else None
