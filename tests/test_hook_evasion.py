"""What the red team used to pass the in-process audit hook unseen, now seen.

Class A: the environment read around os.environ (posix.environ, os.environ._data,
os.environb) and a decoy variable whose name looks like no credential (DATABASE_URL), in
the package's own process and in a child Python its build starts. Class B: code made under
a stdlib file's name (code.replace, CodeType, compile), run in a thread, is still the
package's line. Real jobs on bwrap; the vetted packages are a wheel and a local project
with an in-tree build backend (no index, no setuptools).
"""

from __future__ import annotations

import json
import marshal
import os
import textwrap
from pathlib import Path

import pytest

from conftest import detain_cli, require
from detain.package.phases import vet
from detain.policy import Policy


@pytest.fixture(autouse=True)
def _bwrap():
    require("bwrap")


# a code object made on the host under the stdlib os module's name, unmarshalled inside
FORGED_BLOB = marshal.dumps(compile("def deed():\n    open('/etc/group').close()\n",
                                    os.__file__, "exec")).hex()
JOB = f"""\
import json, marshal, os, posix, threading
posix.environ[b"AWS_SECRET_ACCESS_KEY"]
os.environ._data.get(b"AWS_SECRET_ACCESS_KEY")
os.environb[b"AWS_SECRET_ACCESS_KEY"]
def steal():
    open("/etc/hostname").close()
steal.__code__ = steal.__code__.replace(co_filename=json.__file__)
worker = threading.Thread(target=steal)
worker.start()
worker.join()
code = compile("open('/etc/passwd').close()", json.__file__, "exec")
exec(code)
namespace = {{}}
exec(marshal.loads(bytes.fromhex({FORGED_BLOB!r})), namespace)
worker = threading.Thread(target=namespace["deed"])
worker.start()
worker.join()
"""


def line_of(source: str, text: str) -> int:
    return next(n for n, line in enumerate(source.splitlines(), 1) if text in line)


def run_job(tmp: Path, source: str, *args: str) -> dict:
    (tmp / "job.py").write_text(source)
    report = tmp / "report.json"
    done = detain_cli("run", "--backend", "bwrap", "--report", str(report), *args,
                      str(tmp / "job.py"), timeout=60)
    assert done.returncode in (0, 1), done.stderr.decode()[-2000:]
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def evading(tmp_path_factory) -> dict:
    return run_job(tmp_path_factory.mktemp("evasion"), JOB,
                   "--env", "AWS_SECRET_ACCESS_KEY=sekrit-value")


def test_raw_environment_mappings_are_read_with_an_event(evading):
    reads = {(e["detail"].get("name"), e["line"], e["severity"]) for e in evading["events"]
             if e["event"] == "os.environ.get" and e["file"] == "job.py"}
    for text in ("posix.environ", "os.environ._data", "os.environb"):
        assert ("AWS_SECRET_ACCESS_KEY", line_of(JOB, text), "high") in reads, (text, reads)
    assert "sekrit-value" not in json.dumps(evading["events"])


def test_code_forged_under_a_stdlib_name_stays_the_job_s_line(evading):
    forged = [e for e in evading["events"] if e["event"] == "code.forged"]
    assert {(e["line"], e["severity"], e["detail"]["by"]) for e in forged} >= {
        (line_of(JOB, "steal.__code__ ="), "high", "CodeType/replace"),
        (line_of(JOB, "code = compile"), "high", "compile"),
        (line_of(JOB, "marshal.loads"), "high", "marshal")}, forged
    assert all(e["file"] == "job.py" for e in forged)
    opened = {(e["detail"]["path"], e["file"], e["line"]) for e in evading["events"]
              if e["event"] == "open"}
    # in the thread: the forged function's own line, in the file that forged it
    assert ("/etc/hostname", "job.py", line_of(JOB, 'open("/etc/hostname")')) in opened, opened
    assert ("/etc/passwd", "job.py", line_of(JOB, "exec(code)")) in opened, opened
    # unmarshalled, run in a thread: the line that loaded it
    assert ("/etc/group", "job.py", line_of(JOB, "marshal.loads")) in opened, opened
    assert evading["verdict"]["level"] == "malicious-looking"
    assert any("code forged" in r for r in evading["verdict"]["reasons"]), evading["verdict"]


BENIGN = """\
import collections, dataclasses, enum, functools, json, os, types, typing
@dataclasses.dataclass(frozen=True)
class Point:
    x: int = 0
    y: int = 0
Pair = collections.namedtuple("Pair", "a b")
class Colour(enum.Enum):
    RED = 1
@functools.lru_cache
def cached(n):
    return n
@types.coroutine
def tick():
    yield
print(json.dumps({"p": dataclasses.asdict(Point()), "pair": Pair(1, 2)._asdict()}),
      os.environ.get("HOME"), os.getenv("PATH") is not None, cached(3), Colour.RED)
"""


SCHEDULED = """\
import atexit, os, threading
threading.Thread(target=open, args=("thread-made", "w")).start()
atexit.register(open, "exit-made", "w")
worker = threading.Thread(target=os.environ.get, args=("AWS_SECRET_ACCESS_KEY",))
worker.start()
worker.join()
def dropped():
    open("never-made", "w")
atexit.register(dropped)
atexit.unregister(dropped)
"""


def test_work_handed_to_a_thread_or_exit_handler_is_the_line_that_handed_it(tmp_path):
    """`Thread(target=open)` and `atexit.register(open, ...)` run with no frame of the job
    on the stack: the line that started the thread or registered the handler is theirs."""
    report = run_job(tmp_path, SCHEDULED)
    seen = {(e["event"], str(e["detail"].get("path") or e["detail"].get("name")), e["line"],
             tuple(e.get("via") or ())) for e in report["events"] if e["event"] != "import"}
    assert seen == {
        ("open", "thread-made", 2, ("(a thread it started)",)),
        ("open", "exit-made", 3, ("(an exit handler it registered)",)),
        ("os.environ.get", "AWS_SECRET_ACCESS_KEY", 5, ("(a thread it started)",))}, seen


def test_benign_code_makes_no_new_events(tmp_path):
    report = run_job(tmp_path, BENIGN)
    seen = {(e["event"], e["category"]) for e in report["events"]}
    assert seen <= {("import", "import")}, report["events"]
    assert report["verdict"]["level"] == "clean", report["verdict"]


def build_wheel(dest: Path, name: str, files: dict[str, str]) -> Path:
    import zipfile

    dist = f"{name}-1.0.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    path = dest / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def policy() -> Policy:
    return Policy().merge({"backend": "bwrap", "timeout": 120}, "test")


DULL_READS = """\
import os, posix
os.environ["DATABASE_URL"]
os.getenv("DATABASE_URL")
posix.environ[b"DATABASE_URL"]
os.getenv("APPDATA")
print("decoy names visible:", "DETAIN_DECOYS" in os.environ, b"DETAIN_DECOYS" in posix.environ)
"""


def decoy_reads(phase: dict) -> set[tuple]:
    return {(e["file"], e["line"], e.get("pid") is not None) for e in phase["report"]["events"]
            if e.get("decoy") == "read" and e["category"] == "env"
            and e["detail"].get("name") == "DATABASE_URL" and e["severity"] == "high"}


def test_a_dull_named_decoy_read_is_a_decoy_read(tmp_path):
    wheel = build_wheel(tmp_path, "dullreader", {"dullreader.py": DULL_READS})
    report = vet(str(wheel), policy(), sinkhole=False)
    imported = next(p for p in report["phases"] if p["phase"] == "import")
    assert imported["status"] == 0, imported["output_tail"]
    found = decoy_reads(imported)
    for text in ('os.environ["DATA', 'os.getenv("DATA', "posix.environ"):
        assert ("dullreader.py", line_of(DULL_READS, text), False) in found, (text, found)
    assert not any(e["detail"].get("name") == "APPDATA" for e in imported["report"]["events"]
                   if e["category"] == "env")  # a path planted for Windows stealers: no bait
    assert "decoy names visible: False False" in imported["output_tail"]
    assert report["verdict"]["level"] == "malicious-looking"
    assert any("decoy credentials read: environment variable DATABASE_URL" in r
               for r in report["verdict"]["reasons"]), report["verdict"]


BACKEND = """\
import os, subprocess, sys, zipfile

CHILD = "import os, posix; os.environ.pop('DETAIN_DECOYS', None); posix.environ[b'DATABASE_URL']"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    # a child Python with an environment of its own: the decoy names are not in it
    env = {k: v for k, v in os.environ.items() if k != "DETAIN_DECOYS"}
    subprocess.run([sys.executable, "-c", CHILD], check=True, env=env)
    name = "childreader-1.0-py3-none-any.whl"
    dist = "childreader-1.0.dist-info"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        archive.writestr("childreader.py", "VALUE = 1\\n")
        archive.writestr(dist + "/METADATA", "Metadata-Version: 2.1\\nName: childreader\\n"
                         "Version: 1.0\\n")
        archive.writestr(dist + "/WHEEL", "Wheel-Version: 1.0\\nGenerator: t\\n"
                         "Root-Is-Purelib: true\\nTag: py3-none-any\\n")
        archive.writestr(dist + "/RECORD", "")
    return name
"""


def test_a_child_python_of_the_build_watches_the_decoys(tmp_path):
    project = tmp_path / "childreader"
    project.mkdir()
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = []
        build-backend = "backend"
        backend-path = ["."]
        [project]
        name = "childreader"
        version = "1.0"
        """))
    (project / "backend.py").write_text(BACKEND)
    report = vet(str(project), policy(), sinkhole=False)
    installed = report["phases"][0]
    assert installed["status"] == 0, installed["output_tail"]
    assert ("<string>", 1, True) in decoy_reads(installed), installed["report"]["events"]
    assert report["verdict"]["level"] == "malicious-looking"


@pytest.mark.parametrize("backend", ["bwrap", "restricted"])
def test_selftest_probes_of_the_hook(backend):
    """The battery's hook probes: contained (seen) wherever the job can run them."""
    from detain.selftest import PROBES, resolve
    from detain.selftest.bait import Session
    from detain.selftest.model import CONTAINED, NOT_APPLICABLE
    from detain.selftest.runner import run_target

    require(backend)
    chosen = [p for p in PROBES if p.id.startswith("python.hook-")]
    assert {p.id for p in chosen} == {"python.hook-environ-bypass", "python.hook-code-forgery",
                                      "python.hook-gc-environ", "python.hook-written-module"}
    with Session() as session:
        result = run_target(resolve([backend])[0][0], session, probes=chosen)
    allowed = {CONTAINED} if backend == "bwrap" else {CONTAINED, NOT_APPLICABLE}
    assert {v.status for v in result.verdicts.values()} <= allowed, result.verdicts


AROUND_THE_HOOK = """\
import gc, importlib, posix
values = gc.get_referents(posix.environ)
import _xxsubinterpreters
_xxsubinterpreters.destroy(_xxsubinterpreters.create())
importlib.import_module("_test" + "capi").run_in_subinterp("pass")
"""


def test_reading_around_the_hook_is_suspicious_and_never_copies_what_it_read(tmp_path):
    """gc hands out the environment's dict behind its auditing methods; a subinterpreter
    has no audit hook at all. Both are signals, and the event never carries the objects."""
    report = run_job(tmp_path, AROUND_THE_HOOK, "--env", "AWS_SECRET_ACCESS_KEY=sekrit-value")
    assert report["verdict"]["level"] == "suspicious", report["verdict"]
    kinds = set(report["verdict"]["signals"])
    assert kinds == {"objects read behind the audit hook", "interpreter internals loaded",
                     "subinterpreter started, without the audit hook"}, kinds
    assert "sekrit-value" not in json.dumps(report["events"])


def test_a_shipped_pyc_compiled_under_a_stdlib_name_is_the_package_s(tmp_path):
    """A sourceless .pyc keeps the file name it was compiled under: one claiming to be the
    stdlib's _sitebuiltins (or `<frozen os>`) is code forged, and its decoy read counts."""
    import py_compile

    from test_package import build_wheel

    source = tmp_path / "impl.py"
    source.write_text("import os\nos.environ.get('DATABASE_URL')\n")
    forged = os.path.join(os.path.dirname(os.__file__), "_sitebuiltins.py")
    compiled = Path(py_compile.compile(str(source), cfile=str(tmp_path / "impl.pyc"),
                                       dfile=forged))
    wheel = build_wheel(tmp_path, "detain_selftest_pyc", {
        "detain_selftest_pyc/__init__.py": b"from . import _impl\n",
        "detain_selftest_pyc/_impl.pyc": compiled.read_bytes()})
    report = vet(str(wheel), Policy().merge({"backend": "bwrap", "timeout": 120}, "test"))
    signals = report["verdict"]["signals"]
    assert "code forged" in signals and "decoy credentials read" in signals, report["verdict"]
