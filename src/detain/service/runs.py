"""detain's own HTTP API beside Judge0's: `POST /v1/runs` takes a job and a policy table.

The body is JSON:

    {"code": "print(42)", "args": ["x"], "stdin": "text",
     "policy": {"timeout": 5, "memory": "128M", "network": "none"}}

(`module` instead of `code` runs a module). The policy table uses the policy-file
vocabulary, but, like a project's own config, it may only tighten the caller's ceiling:
lower limits, no network. Anything else (a backend, mounts, hosts) is refused with the
reason. The stored response is the Result and the report, so `GET /v1/runs/{id}` serves
it as JSON, SARIF or HTML without running anything again.
"""

from __future__ import annotations

from typing import Any

from ..config import tighten
from ..errors import DetainError
from ..job import Job
from ..policy import Policy
from ..report.build import build_report
from ..result import Result
from .judge0 import SOURCE_CAP

ARGS_CAP = 256


def parse(body: Any, ceiling: Policy) -> tuple[Job, Policy]:
    """The job and its policy within `ceiling`; a DetainError says what is wrong."""
    if not isinstance(body, dict):
        raise DetainError("the body must be a JSON object with `code` or `module`")
    unknown = sorted(set(body) - {"code", "module", "args", "stdin", "policy"})
    if unknown:
        raise DetainError(f"unknown field(s): {', '.join(map(str, unknown[:10]))} (known: code, "
                          "module, args, stdin, policy)")
    code, module = body.get("code"), body.get("module")
    if (code is None) == (module is None):
        raise DetainError("give exactly one of `code` or `module`")
    args = body.get("args", [])
    if not isinstance(args, list) or len(args) > ARGS_CAP:
        raise DetainError(f"`args` must be a list of at most {ARGS_CAP} strings")
    args = [_text(arg, "args") for arg in args]
    stdin = _text(body.get("stdin", ""), "stdin").encode()
    table = body.get("policy", {})
    if not isinstance(table, dict):
        raise DetainError("`policy` must be an object of policy settings")
    policy, report = tighten(ceiling, table, "policy")
    if report.refused:
        raise DetainError(f"policy: refused {'; '.join(report.refused)} (a request may only "
                          "lower limits or set network = \"none\")")
    if code is not None:
        return Job.code(_text(code, "code"), *args, stdin=stdin), policy
    return Job.module(_text(module, "module"), *args, stdin=stdin), policy


def _text(value: Any, name: str) -> str:
    try:
        size = len(value.encode("utf-8")) if isinstance(value, str) else None
    except UnicodeEncodeError:
        raise DetainError(f"`{name}` is not valid UTF-8 text (a lone surrogate)") from None
    if size is None or size > SOURCE_CAP:
        raise DetainError(f"`{name}` must be a string of at most {SOURCE_CAP} bytes")
    if "\0" in value:
        raise DetainError(f"`{name}` must not contain NUL characters")
    return value


def response(result: Result) -> dict[str, Any]:
    return {"result": result.to_dict(), "report": build_report(result)}
