"""Errors a user can cause, each carrying a message that says what to do.

The CLI turns every `DetainError` into one line on stderr and exit status 2; anything
else escaping is a bug in detain, not in the user's input.
"""

from .report.safe_text import visible

EXIT_DETAIN_ERROR = 2  # detain's own error: bad input, no backend, a sandbox that failed
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, after the sandbox was removed


class DetainError(Exception):
    """A problem with the user's input or host that detain can explain in one line."""

    def __str__(self) -> str:
        """One line even when the message quotes input with control characters in it (a
        path holding a newline), escaped so that the input still shows."""
        return visible(super().__str__())


class PolicyError(DetainError):
    """An invalid policy value (flag, policy file or [tool.detain])."""


class BackendUnavailable(DetainError):
    """The requested backend cannot run on this host; the message says why and what to do."""


class ProtectionError(DetainError):
    """A protection the policy asks for could not be applied.

    DESIGN rule 4: that is an error, never a warning.
    """
