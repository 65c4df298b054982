"""Judge0 CE's vocabulary mapped onto detain: languages, statuses, submissions, responses.

Judge0 clients (the official `judge0` package among them) send this dialect; each submission
becomes one detain Job under a Policy no looser than the caller's token allows (the
submission's limits may only tighten that ceiling: config.tighten, the rule a project's
own config follows). Where a client can tell, Judge0's meaning is kept: status ids, the
422 shape `{"field": ["message"]}`, time and wall time as strings of seconds, memory in KB.

Judge0 compiles and runs dozens of languages inside isolate; detain runs Python only, on
the server's own interpreter. It reports itself as Judge0 Extra CE 1.13.1, the version for
which the official client resolves its default language (`PYTHON_FOR_ML`) and `PYTHON` to
id 10; CE's Python 3 id 71 is accepted too, and 89 is the multi-file program, whose
`additional_files` zip holds a `main.py`. The zip is unpacked by a few lines of bootstrap
*inside* the sandbox, so nothing of it is ever written on the host.
"""

from __future__ import annotations

import base64
import binascii
import shlex
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import tighten
from ..job import Job
from ..policy import Policy
from ..result import Result

VERSION = "1.13.1-extra"  # the official client picks its language-id table by this
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
PYTHON_IDS = (10, 71)
MULTI_FILE = 89
LANGUAGES = {
    **{number: {"id": number, "name": f"Python ({PYTHON})", "is_archived": False,
                "source_file": "script.py", "compile_cmd": None, "run_cmd": "python3 script.py"}
       for number in PYTHON_IDS},
    MULTI_FILE: {"id": 89, "name": "Multi-file program", "is_archived": False,
         "source_file": None, "compile_cmd": None, "run_cmd": "python3 main.py"},
}
STATUSES = [
    (1, "In Queue"), (2, "Processing"), (3, "Accepted"), (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"), (6, "Compilation Error"), (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"), (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"), (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"), (13, "Internal Error"), (14, "Exec Format Error"),
]
STATUS = dict(STATUSES)
SIGNAL_STATUS = {11: 7, 25: 8, 8: 9, 6: 10}  # SIGSEGV, SIGXFSZ, SIGFPE, SIGABRT
DEFAULT_FIELDS = ("token", "stdout", "time", "memory", "stderr", "compile_output", "message",
                  "status")
ALL_FIELDS = ("source_code", "language_id", "stdin", "expected_output", "stdout", "stderr",
              "compile_output", "message", "exit_code", "exit_signal", "status", "created_at",
              "finished_at", "token", "time", "wall_time", "memory", "cpu_time_limit",
              "wall_time_limit", "memory_limit", "max_processes_and_or_threads",
              "max_file_size", "enable_network", "command_line_arguments",
              "redirect_stderr_to_stdout", "callback_url", "number_of_runs")
ENCODED = ("source_code", "stdin", "expected_output", "stdout", "stderr", "compile_output",
           "additional_files")
SOURCE_CAP = 1 << 20  # bytes of source, stdin or expected output, each, after decoding
ZIP_CAP = 4 << 20
ARGS_CAP = 4096
LIMIT_MAX = 1e9  # above any ceiling; keeps 400-digit integers out of float conversion
# Judge0 names on the left, detain's policy vocabulary (and the factor to its unit) right.
LIMITS = {"cpu_time_limit": ("cpu", 1.0), "wall_time_limit": ("timeout", 1.0),
          "memory_limit": ("memory", 1024), "max_processes_and_or_threads": ("processes", 1),
          "max_file_size": ("disk", 1024)}
BOOTSTRAP = """\
import base64, io, os, runpy, sys, zipfile
if {merge}:
    os.dup2(1, 2)
if {archive!r}:
    with zipfile.ZipFile(io.BytesIO(base64.b64decode({archive!r}))) as z:
        z.extractall('.')
sys.argv[0] = {name!r}
sys.path.insert(0, os.getcwd())
runpy.run_path({name!r}, run_name='__main__')
"""


class Invalid(Exception):
    """A submission Judge0 would answer with 422: `errors` maps a field to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


@dataclass
class Submission:
    """One accepted submission: what to run, under which policy, and what was asked."""

    job: Job
    policy: Policy
    request: dict[str, Any] = field(default_factory=dict)  # decoded, for the stored record
    expected_output: str | None = None
    callback_url: str | None = None


def decode(value: Any, name: str, encoded: bool, cap: int = SOURCE_CAP) -> str | None:
    """A text field, from base64 when the request says so; capped, never trusted."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid({name: ["must be a string"]})
    if encoded:
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise Invalid({name: ["is not valid base64"]}) from None
    else:
        raw = strict_utf8(value, name)
    if len(raw) > cap:
        raise Invalid({name: [f"is longer than {cap} bytes"]})
    return raw.decode("utf-8", "replace")


def strict_utf8(value: str, name: str) -> bytes:
    """A string that is text: a lone surrogate (valid JSON, not UTF-8) is a 422."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid({name: ["is not valid UTF-8 text (a lone surrogate)"]}) from None


def encode(text: str | None, encoded: bool) -> str | None:
    if text is None or not encoded:
        return text
    return base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")


def parse(body: Any, encoded: bool, ceiling: Policy) -> Submission:
    """Check a submission and turn it into a Job and a Policy within `ceiling`."""
    if not isinstance(body, dict):
        raise Invalid({"submission": ["must be a JSON object"]})
    language = body.get("language_id")
    if isinstance(language, bool) or not isinstance(language, int) or language not in LANGUAGES:
        raise Invalid({"language_id": [f"language with id {language!r} doesn't exist "
                                       f"(detain runs Python: {sorted(LANGUAGES)})"]})
    source = decode(body.get("source_code"), "source_code", encoded)
    archive = body.get("additional_files")
    if archive is not None:
        if not isinstance(archive, str) or len(archive) > ZIP_CAP * 4 // 3 + 4:
            raise Invalid({"additional_files": [f"must be a base64 zip of at most {ZIP_CAP} "
                                                "bytes"]})
        try:
            base64.b64decode(archive.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise Invalid({"additional_files": ["is not valid base64"]}) from None
    if language != MULTI_FILE and not source:
        raise Invalid({"source_code": ["can't be blank"]})
    if "\0" in (source or ""):
        raise Invalid({"source_code": ["must not contain NUL characters"]})
    if language == MULTI_FILE and not archive:
        raise Invalid({"additional_files": ["can't be blank for a multi-file program "
                                            "(a zip with main.py)"]})
    stdin = decode(body.get("stdin"), "stdin", encoded)
    expected = decode(body.get("expected_output"), "expected_output", encoded)
    args = _arguments(body.get("command_line_arguments"))
    policy = _policy(body, ceiling)
    merge = _flag(body, "redirect_stderr_to_stdout")
    callback = body.get("callback_url")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 2048):
        raise Invalid({"callback_url": ["must be a URL of at most 2048 characters"]})
    runs = body.get("number_of_runs", 1)
    if runs not in (1, None):
        raise Invalid({"number_of_runs": ["must be 1 (detain runs a submission once)"]})
    if language != MULTI_FILE and archive is None and not merge:
        job = Job.code(source or "", *args, stdin=(stdin or "").encode())
    else:
        name = "main.py" if language == MULTI_FILE else "script.py"
        setup = BOOTSTRAP.format(merge=merge, archive=archive or "", name=name)
        if language != MULTI_FILE:
            setup = (f"with open('script.py', 'w') as script:\n    script.write({source!r})\n"
                     + setup)
        job = Job.code(setup, *args, stdin=(stdin or "").encode())
    request = {k: body.get(k) for k in ALL_FIELDS if k in body and k not in ENCODED}
    request.update(language_id=language, source_code=source, stdin=stdin,
                   expected_output=expected)
    return Submission(job, policy, request, expected, callback)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value in (None, False, "false"):
        return False
    if value in (True, "true"):
        return True
    raise Invalid({name: ["must be true or false"]})


def _arguments(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if not isinstance(value, str) or len(value) > ARGS_CAP or "\0" in value:
        raise Invalid({"command_line_arguments": [f"must be a string of at most {ARGS_CAP} "
                                                  "characters, without NUL"]})
    strict_utf8(value, "command_line_arguments")
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise Invalid({"command_line_arguments": [str(exc)]}) from None


def _policy(body: dict[str, Any], ceiling: Policy) -> Policy:
    """The ceiling, tightened by the submission's limits; a limit above it is a 422."""
    table: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, (setting, factor) in LIMITS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 < value <= LIMIT_MAX:
            errors[name] = [f"must be a number greater than 0 and at most {LIMIT_MAX:g}"]
            continue
        table[setting] = int(value * factor) if isinstance(factor, int) else float(value)
    network = _flag(body, "enable_network")
    if network and not ceiling.allow_hosts:
        errors["enable_network"] = ["this token allows no network"]
    if not network:
        table["network"] = "none"
    policy, report = tighten(ceiling, table, "submission")
    for refused in report.refused:
        setting = refused.split(" ", 1)[0]
        name = next((k for k, (s, _) in LIMITS.items() if s == setting), "submission")
        errors.setdefault(name, []).append(f"{refused}: above this token's ceiling")
    if errors:
        raise Invalid(errors)
    return replace(policy, limits=replace(policy.limits,
                                          asked=policy.limits.asked | frozenset(table)))


def judge(result: Result, expected: str | None) -> dict[str, Any]:
    """Judge0's response fields for a finished run."""
    stdout = result.stdout.decode("utf-8", "replace")
    stderr = result.stderr.decode("utf-8", "replace")
    message = None
    if result.error:
        status, message = 13, result.error
    elif result.timed_out or result.limit == "cpu":
        status, message = 5, "Time limit exceeded"
    elif result.signal:
        status = SIGNAL_STATUS.get(result.signal, 12)
        message = f"Exited with signal {result.signal}"
    elif result.limit:
        status, message = 12, f"{result.limit} limit hit"
    elif result.exit_code:
        status, message = 11, f"Exited with error status {result.exit_code}"
    elif expected is not None and _lines(stdout) != _lines(expected):
        status = 4
    else:
        status = 3
    return {"stdout": stdout or None, "stderr": stderr or None, "compile_output": None,
            "message": message, "exit_code": result.exit_code, "exit_signal": result.signal,
            "status_id": status, "time": f"{result.cpu_seconds:.3f}",
            "wall_time": f"{result.wall_seconds:.3f}",
            "memory": result.peak_memory_bytes // 1024 or None}


def _lines(text: str) -> list[str]:
    """Judge0 compares outputs ignoring trailing whitespace on each line and at the end."""
    return [line.rstrip() for line in text.rstrip().splitlines()]


def view(record: dict[str, Any], fields: tuple[str, ...], encoded: bool) -> dict[str, Any]:
    """The stored record as Judge0 shows it: only `fields`, status as {id, description}."""
    shown: dict[str, Any] = {}
    for name in fields:
        if name == "status":
            status = record.get("status_id", 1)
            shown[name] = {"id": status, "description": STATUS[status]}
        elif name in ENCODED:
            shown[name] = encode(record.get(name), encoded)
        elif name in ALL_FIELDS or name == "language_id":
            shown[name] = record.get(name)
    return shown


def fields_param(value: str | None) -> tuple[str, ...]:
    if not value:
        return DEFAULT_FIELDS
    if value.strip() == "*":
        return (*ALL_FIELDS, "language_id")
    asked = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [name for name in asked if name not in ALL_FIELDS and name != "language_id"]
    if unknown:
        raise Invalid({"fields": [f"unknown field(s): {', '.join(unknown[:10])}"]})
    return asked


def config_info(ceiling: Policy, batch: int, queue: int) -> dict[str, Any]:
    """/config_info: the ceiling reads as Judge0's defaults and maxima (they are equal)."""
    lim = ceiling.limits
    return {
        "maintenance_mode": False, "enable_wait_result": True,
        "enable_compiler_options": False, "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": True, "enable_submission_delete": True,
        "enable_callbacks": True, "callbacks_max_tries": 3, "callbacks_timeout": 5.0,
        "enable_additional_files": True, "max_queue_size": queue,
        "cpu_time_limit": lim.cpu_seconds, "max_cpu_time_limit": lim.cpu_seconds,
        "cpu_extra_time": 0.0, "max_cpu_extra_time": 0.0,
        "wall_time_limit": lim.wall_seconds, "max_wall_time_limit": lim.wall_seconds,
        "memory_limit": lim.memory_bytes // 1024, "max_memory_limit": lim.memory_bytes // 1024,
        "stack_limit": lim.memory_bytes // 1024, "max_stack_limit": lim.memory_bytes // 1024,
        "max_processes_and_or_threads": lim.processes,
        "max_max_processes_and_or_threads": lim.processes,
        "enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False,
        "allow_enable_per_process_and_thread_time_limit": False,
        "allow_enable_per_process_and_thread_memory_limit": False,
        "max_file_size": lim.disk_bytes // 1024, "max_max_file_size": lim.disk_bytes // 1024,
        "number_of_runs": 1, "max_number_of_runs": 1, "redirect_stderr_to_stdout": False,
        "max_extract_size": ZIP_CAP // 1024, "enable_batched_submissions": True,
        "max_submission_batch_size": batch, "submission_cache_duration": 1.0,
        "use_docs_as_homepage": False, "allow_enable_network": bool(ceiling.allow_hosts),
        "enable_network": False,
    }
