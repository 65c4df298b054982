"""`detain run`: one untrusted script, snippet or module, output passed through."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from ..errors import EXIT_DETAIN_ERROR

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

EXIT_FAIL_ON = 3
LIMIT_FLAG = {"memory": "--memory SIZE", "cpu": "--cpu SECONDS", "disk": "--disk SIZE"}
STRICT_HINT = ("this failed under -W error (strict profile), a warning turned into an "
               "error; `--profile isolated` runs without it")
# A warning raised as an exception ends a traceback (`DeprecationWarning: ...`), or a
# pytest failure (`E   DeprecationWarning: ...`); `file:line: ResourceWarning` lines are
# the launcher's notices about unclosed files, not failures.
RAISED_WARNING = re.compile(rb"^(?:E +)?(?:\w+\.)*\w*Warning(?::|$)", re.MULTILINE)
FAIL_ON_CHOICES = ("network", "write", "subprocess", "native", "high")

LIMIT_FLAGS = (
    ("--timeout", "SECONDS", "wall-clock limit (default 30); exceeded: exit 124"),
    ("--cpu", "SECONDS", "CPU-time limit (default 30)"),
    ("--memory", "SIZE", "memory limit, e.g. 256M (default 512M); exceeded: exit 137"),
    ("--processes", "N", "process limit (default 64)"),
    ("--disk", "SIZE", "scratch disk cap (default 256M)"),
    ("--output", "SIZE", "cap per output stream (default 4M)"),
    ("--open-files", "N", "open file limit (default 256)"),
    ("--limits-scope", "total|per-process", "a --memory or --disk you set must hold for the "
     "whole job or the run is refused; total: the defaults too; per-process: accept memory "
     "per process and disk per file where nothing better exists here (the result says so)"),
)


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """Policy flags shared by every command that runs code."""
    group = parser.add_argument_group("isolation")
    group.add_argument("--backend", metavar="NAME", help="a backend from `detain doctor`, "
                       "or auto (default): the strongest one that runs here, is not "
                       "emulated and can do what the job needs (doctor shows its pick)")
    group.add_argument("--min-level", metavar="N", help="refuse backends below this level "
                       "(default 2; 0 none, 1 low, 2 medium, 3 high, 4 highest)")
    group.add_argument("--policy", metavar="FILE", help="a TOML policy file (overrides "
                       "your own ~/.config/detain/policy.toml; flags override both)")
    group.add_argument("--project-config", action="store_true", help="also read "
                       "[tool.detain] from the project's pyproject.toml, as untrusted input: "
                       "it may only lower limits or set network = \"none\"; whatever else it "
                       "says is refused and reported")
    group.add_argument("--profile", choices=("strict", "isolated"), help="interpreter flags: "
                       "strict = -I -S -X dev -W error (default), isolated = -I")
    group.add_argument("--python", metavar="PATH", help="interpreter to run inside "
                       "(default: the base interpreter running detain)")
    group.add_argument("--env", metavar="NAME=VALUE", action="append",
                       help="set a variable inside (the environment is empty otherwise)")
    group.add_argument("--mount", metavar="HOST:SANDBOX[:rw]", action="append",
                       help="show a host path inside, read-only unless :rw")
    group.add_argument("--allow-host", metavar="HOST[:PORT]", action="append",
                       help="let the code reach HOST (a name, *.domain or IP literal; ports "
                       "80 and 443 unless given) through detain's proxy; repeatable "
                       "(default: no network at all)")
    group.add_argument("--network", choices=("none", "sinkhole"), help="none (default): no "
                       "network; sinkhole: nothing leaves, but every DNS query is answered "
                       "and every TCP/UDP connection is accepted and recorded (what, to "
                       "where, the first bytes); bwrap as root only")
    group.add_argument("--copy-out", metavar="SANDBOX_PATH:HOST_DIR", action="append",
                       help="after the run, copy a path under /scratch into HOST_DIR: a "
                       "directory's contents (results:./out gives ./out/a.txt, as cp -r "
                       "results/. out/ would), a file under its own name; no symlinks "
                       "followed, size-capped")
    deps = parser.add_argument_group("dependencies (installed inside the sandbox)")
    deps.add_argument("--requirements", metavar="FILE", help="install these requirements "
                      "into a throw-away venv inside the sandbox before the job (wheels only)")
    deps.add_argument("--with", dest="with_packages", metavar="PKG", action="append",
                      help="a requirement to install inside, like --with 'attrs>=23' "
                      "(repeatable)")
    deps.add_argument("--wheelhouse", metavar="DIR", help="local directory of wheels the "
                      "requirements are installed from")
    containers = parser.add_argument_group("containers")
    containers.add_argument("--image", metavar="NAME", help="a local container image whose "
                            "python3 runs the job (podman, docker, gvisor)")
    containers.add_argument("--trace", choices=("syscalls",), nargs="?", const="syscalls",
                            help="observe every process of the sandbox from outside: "
                            "execs with argv, opens, connections, file changes, as "
                            "kernel/runtime events (bwrap, landlock, podman as root: a "
                            "ptrace tracer; microvm: the same tracer inside the guest; "
                            "gvisor: its kernel's trace); on by default for detain package "
                            "and detain pytest where the backend allows")
    limits = parser.add_argument_group("limits")
    for flag, metavar, text in LIMIT_FLAGS:
        limits.add_argument(flag, metavar=metavar, help=text)


def policy_from_args(args: argparse.Namespace, project_dir: str = "."):
    """The caller's policy; with --project-config, tightened by `project_dir`'s table."""
    from ..config import configure

    overrides: dict[str, Any] = {
        "backend": args.backend, "min_level": args.min_level, "profile": args.profile,
        "python": args.python, "env": args.env, "mount": args.mount, "copy_out": args.copy_out,
        "network": args.network, "allow_host": args.allow_host,
        "requirements": args.requirements,
        "with_packages": args.with_packages, "wheelhouse": args.wheelhouse,
        "image": args.image, "trace": args.trace,
    }
    for flag, _, _ in LIMIT_FLAGS:
        name = flag[2:].replace("-", "_")
        overrides[name] = getattr(args, name)
    policy, project = configure(args.policy, overrides, project_dir=(
        project_dir if getattr(args, "project_config", False) else None))
    if project is not None:
        from ..report.safe_text import say

        say(project.describe())
    return policy


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """What the code did: report files, a terminal summary, CI gates, a policy to copy."""
    group = parser.add_argument_group("report")
    group.add_argument("--report", metavar="FILE", action="append", default=[],
                       help="write FILE.json, FILE.sarif or FILE.html (repeatable); the job's "
                       "files are statically scanned first")
    group.add_argument("--summary", action="store_true",
                       help="print the behaviour summary to stderr after the run")
    group.add_argument("--fail-on", metavar="WHAT", action="append", default=[],
                       choices=FAIL_ON_CHOICES, help=f"exit {EXIT_FAIL_ON} (unless the job "
                       "itself failed) when the run showed network, write, subprocess, "
                       "native or high-severity behaviour (repeatable)")
    group.add_argument("--suggest-policy", metavar="FILE", nargs="?", const="-",
                       help="write the least-privileged policy (TOML) that allows what this "
                       "run did, to FILE or to stderr (limits: 3x what was measured, at "
                       "least 10 s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a script, -c CODE or -m MODULE in a sandbox",
        description="Run untrusted Python in a fresh sandbox. Output passes through; the exit "
        "status is the code's own, 124 on timeout, 137 when a limit killed it, 2 for detain's "
        "own errors, 4 when the code succeeded but --copy-out could not bring back all it "
        "left (the Result's copy_out_error says why).",
        usage="detain run [OPTIONS] (SCRIPT | -c CODE | -m MODULE) [ARGS ...]")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("-c", dest="code", metavar="CODE", help="program passed as a string")
    what.add_argument("-m", dest="module", metavar="MODULE", help="run a library module")
    parser.add_argument("--json", metavar="PATH", help="write the Result as JSON to PATH "
                        "(- for stdout; the job's stdout is then only in the JSON)")
    add_report_options(parser)
    add_policy_options(parser)
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS]",
                        help="script and its arguments (after -c/-m: the arguments)")
    parser.set_defaults(handler=execute)


def _stream(target) -> Any:
    """The job's output relayed to `target`; once its reader is gone (`| head`), the rest
    is dropped, as a pipeline's writer would stop, and the run finishes and cleans up."""
    gone = []

    def write(chunk: bytes) -> None:
        if gone:
            return
        try:
            target.write(chunk)
            target.flush()
        except BrokenPipeError:
            gone.append(True)
            _silence(target)
    return write


def _silence(target) -> None:
    """Point a stream whose reader is gone at /dev/null, so no later flush (the final
    report line, the interpreter's exit) raises again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, target.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def execute(args: argparse.Namespace) -> int:
    from ..api import Sandbox
    from ..errors import DetainError
    from ..job import Job

    result = None
    if args.argv[:1] == ["--"]:  # `detain run [OPTIONS] -- job.py`: the end of detain's options
        args.argv = args.argv[1:]
    try:
        if args.code is None and args.module is None and not args.argv:
            raise DetainError(_nothing_to_run(args))
        stdin = _stdin()
        if args.code is not None:
            job = Job.code(args.code, *args.argv, stdin=stdin)
        elif args.module is not None:
            job = Job.module(args.module, *args.argv, stdin=stdin)
        else:
            job = Job.script(args.argv[0], *args.argv[1:], stdin=stdin)
        policy = policy_from_args(args)
        pool = getattr(args, "pool", None)  # set by `detain serve`: warm sandboxes
        sandbox = pool.sandbox(policy) if pool is not None else Sandbox(policy)
        reporting = _reporting(args)
        scan = _prescan(job) if reporting else None
        to_json_stdout = args.json == "-"
        result = sandbox.run(job, stdout=None if to_json_stdout else _stream(sys.stdout.buffer),
                             stderr=_stream(sys.stderr.buffer),
                             cancel=getattr(args, "cancel", None))
    except DetainError as exc:
        if args.json:
            _write_json(args.json, {"error": str(exc), "status": EXIT_DETAIN_ERROR})
        raise
    if args.json:
        _write_json(args.json, result.to_dict())
    met = _report(args, result, scan) if reporting else []
    from ..report.safe_text import say

    for line in outcome_lines(result):
        say(line)
    if met and result.status == 0:
        say(f"--fail-on {', '.join(met)}: seen in this run")
        return EXIT_FAIL_ON
    return result.status


def _nothing_to_run(args: argparse.Namespace) -> str:
    """The "nothing to run" error, naming the likely cause: `--suggest-policy` takes an
    optional FILE, so `--suggest-policy job.py` made the script its FILE."""
    taken = args.suggest_policy not in (None, "-")
    return ("nothing to run: give a SCRIPT, -c CODE or -m MODULE" + (
        f" (--suggest-policy took {args.suggest_policy!r} as the FILE to write: give it one, "
        "as in --suggest-policy policy.toml job.py, or --suggest-policy=- for stderr)"
        if taken else ""))


def outcome_lines(result) -> list[str]:
    """detain's own lines on how a run ended, each saying which flag changes it."""
    if result.error:
        return [f"error: {result.error}"]
    lines = []
    if result.timed_out:
        lines.append(timeout_line(result))
    elif result.limit:
        flag = LIMIT_FLAG.get(result.limit)
        lines.append(f"{result.limit} limit hit on {result.backend} (exit {result.status})"
                     + (f"; raise it with {flag}" if flag else ""))
    elif result.status != 0 and failed_on_warning(result):
        lines.append(STRICT_HINT)
    if result.copy_out_error:
        lines.append(f"{result.copy_out_error} (exit {result.status})")
    return lines


def timeout_line(result) -> str:
    """The wall-clock limit, and how much of it installing requirements took: their
    install runs inside the sandbox, on the job's clock."""
    policy = result.policy
    spent = ""
    if result.install_seconds is not None:
        spent = f", {result.install_seconds:.1f} s of it installing requirements"
    elif policy.get("requirements") or policy.get("with_packages"):
        spent = ", still installing requirements"
    return (f"timed out after {policy['limits']['timeout']:g} s on {result.backend} "
            f"(exit {result.status}){spent}; raise the limit with --timeout SECONDS")


def failed_on_warning(result) -> bool:
    """Whether a failed strict-profile run shows a warning raised as an error (the end of
    each stream, where a traceback or pytest's failure report is)."""
    return result.policy.get("profile") == "strict" and any(
        RAISED_WARNING.search(stream[-65536:]) for stream in (result.stderr, result.stdout))


def _reporting(args: argparse.Namespace) -> bool:
    from ..report.output import check_path

    for path in args.report:
        check_path(path)
    return bool(args.report or args.summary or args.fail_on or args.suggest_policy)


def _prescan(job) -> dict | None:
    """The static pre-scan of what the job runs, before it runs; -m modules have no file."""
    import tempfile

    from ..scan import scan

    if job.kind == "script":
        return scan(job.target)
    if job.kind == "code":
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "code.py")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(job.target)
            return scan(path, display_name="<string>")
    return None


def _report(args: argparse.Namespace, result, scan: dict | None) -> list[str]:
    from ..report.build import build_report, fail_on
    from ..report.output import write_report

    report = build_report(result, scan)
    for path in args.report:
        write_report(report, path)
    if args.summary:
        from ..report.safe_text import say
        from ..report.terminal import render_terminal
        from ..report.verdict import line

        render_terminal(report)
        say(line(report["verdict"]))
    if args.suggest_policy:
        from ..report.suggest import suggest_policy

        text = suggest_policy(report)
        if args.suggest_policy == "-":
            sys.stderr.write(text)
        else:
            _write_text(args.suggest_policy, text, "--suggest-policy")
    return fail_on(report, args.fail_on)


def _write_text(path: str, text: str, flag: str) -> None:
    from ..errors import DetainError

    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise DetainError(f"{flag} {path}: cannot write ({exc.strerror})") from None


def _stdin() -> int | None:
    """The caller's stdin as an fd to copy from, unless it is a terminal.

    The fd itself never enters the sandbox (a terminal would allow TIOCSTI injection, a
    file could be seeked or written): detain copies its bytes through a pipe.
    """
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
    except (OSError, ValueError):
        return None
    if fd < 0 or os.isatty(fd):
        return None
    return fd


def _write_json(path: str, data: dict) -> None:
    from ..errors import DetainError

    text = json.dumps(data, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise DetainError(f"--json {path}: cannot write ({exc.strerror})") from None
