"""detain: run untrusted Python in a disposable sandbox and see what it did.

    >>> import detain
    >>> result = detain.run(code="print(6 * 7)", timeout=10)
    >>> result.stdout, result.status
    (b'42\\n', 0)

Importing detain has no side effects and imports nothing heavy: names resolve on use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing would double the CLI's start-up
__version__ = "0.1.0"
__all__ = ["DetainError", "Job", "Policy", "Result", "Sandbox", "load_policy", "run"]

_EXPORTS = {
    "run": "api", "Sandbox": "api", "Policy": "policy", "load_policy": "config", "Job": "job",
    "Result": "result", "DetainError": "errors",
}

if TYPE_CHECKING:
    from typing import Any

    from .api import Sandbox, run
    from .config import load_policy
    from .errors import DetainError
    from .job import Job
    from .policy import Policy
    from .result import Result


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'detain' has no attribute {name!r}")
