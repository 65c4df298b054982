"""Figures as a person reads them: durations and sizes with units, and the line that says
how much a cut list left out. Shared by the terminal and the HTML page so both say the
same thing the same way ("1.01 s", never "1.0147")."""

from __future__ import annotations

MORE_HINT = "see --json / --report"


def duration(seconds: float | None) -> str:
    """`0.4 ms`, `18 ms`, `1.01 s`, `2 min 5 s`; `-` when unknown."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def size(number: int | None) -> str:
    """Bytes in binary units, as the limits are given: `512 B`, `7.6 MiB`."""
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        return "-"
    if number < 1024:
        return f"{number} B"
    value = number / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def more(hidden: int, what: str = "") -> str | None:
    """The note under a list cut short: `… 12 more rows (see --json / --report)`; None when
    the whole list was shown, so a caller can use it unconditionally."""
    if hidden <= 0:
        return None
    return f"… {hidden} more{' ' + what if what else ''} ({MORE_HINT})"
