"""Inside the sandbox: run a project's pytest suite and keep a timeline of its tests.

Run by the launcher as the job: `pytest_driver.py PROJECT TIMELINE [PYTEST_ARGS...]`.
PROJECT is the read-only mount of the project; it is copied into the writable scratch dir,
where the suite runs and may write whatever it likes. The driver claims its own code as
detain's (`detain.guest`, honoured once, before any project code runs; just after it
imports pytest, whose import event aligns the clocks) and copies in process, so neither
its file events nor a `cp` process could show up as something the project did (the
verdict once called every suite malicious-looking for it). A tiny plugin appends one
JSON line to TIMELINE: its node id, outcome, and start/end on both clocks. The host uses it to tie
each behaviour event to the test that was running. The driver records the monotonic time
just before it imports pytest, which the host matches with the audit hook's `import
pytest` event to align the hook's clock with this timeline.

The timeline is written by code that shares a process with the suite, so it is evidence
of the same (in-process) standing as the audit events: any test can append forged records
to it, and the host treats it as the job's claim, never as a count of its own. The
process exits with pytest's own exit status.
"""

import json
import os
import shutil
import sys
import time

SKIP = (".git", ".hg", ".tox", ".nox", ".venv", "venv", "__pycache__", ".pytest_cache",
        ".mypy_cache", "node_modules")


def copy_project(source, dest):
    """Files as the job's own (writable, default modes), links as links, never followed."""
    os.makedirs(dest)
    for root, dirs, files in os.walk(source):
        if root == source:
            dirs[:] = [d for d in dirs if d not in SKIP]
            files = [f for f in files if f not in SKIP]
        target = os.path.join(dest, os.path.relpath(root, source))
        for name in list(dirs):
            if os.path.islink(os.path.join(root, name)):
                dirs.remove(name)
                files.append(name)
            else:
                os.makedirs(os.path.join(target, name), exist_ok=True)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                os.symlink(os.readlink(path), os.path.join(target, name))
            elif os.path.isfile(path):
                shutil.copyfile(path, os.path.join(target, name))


class Timeline:
    """pytest plugin: one line per test, flushed as it ends."""

    def __init__(self, handle):
        self.handle = handle
        self.started = {}
        self.outcomes = {}

    def write(self, record):
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def pytest_runtest_logstart(self, nodeid, location):
        self.started[nodeid] = (time.time(), time.monotonic())

    def pytest_runtest_logreport(self, report):
        """The call phase's outcome; a failing setup or teardown is an error."""
        if report.when == "call":
            self.outcomes.setdefault(report.nodeid, report.outcome)
        elif report.failed:
            self.outcomes[report.nodeid] = "error"
        elif report.skipped:
            self.outcomes.setdefault(report.nodeid, "skipped")

    def pytest_runtest_logfinish(self, nodeid, location):
        wall, mono = self.started.pop(nodeid, (None, None))
        self.write({"nodeid": nodeid,
                    "outcome": self.outcomes.pop(nodeid, "passed"),
                    "start": wall, "end": time.time(), "start_mono": mono,
                    "end_mono": time.monotonic()})


def main():
    project, timeline, *args = sys.argv[1:]
    os.makedirs(os.path.dirname(timeline), exist_ok=True)
    with open(timeline, "a", encoding="utf-8") as handle:
        plugin = Timeline(handle)
        plugin.write({"calibrate": "pytest", "mono": time.monotonic(), "wall": time.time()})
        import pytest  # the hook's `import pytest` event, while this file is the job's

        sys.audit("detain.guest", __file__)  # from here on, the driver's own work is detain's
        workdir = os.path.join(os.getcwd(), "project")
        copy_project(project, workdir)
        os.chdir(workdir)
        sys.path.insert(0, workdir)
        code = pytest.main(["-p", "no:cacheprovider", *args], plugins=[plugin])
    sys.exit(int(code))


if __name__ == "__main__":
    main()
