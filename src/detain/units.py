"""Human-friendly sizes and durations for policy values."""

from __future__ import annotations

import re

from .errors import PolicyError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: object, what: str) -> int:
    """Bytes from `123`, `"512M"`, `"1GiB"`; binary units because limits are memory pages."""
    if isinstance(value, bool):
        raise PolicyError(f"{what}: expected a size like 512M, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise PolicyError(f"{what}: expected a size like 512M or 1G, got {value!r}")
        number = int(float(match.group(1)) * _FACTORS[match.group(2).lower()])
    if number <= 0:
        raise PolicyError(f"{what}: must be greater than zero, got {value!r}")
    return number


def parse_seconds(value: object, what: str) -> float:
    """Seconds from `30`, `2.5`, `"90s"`, `"2m"`."""
    if isinstance(value, bool):
        raise PolicyError(f"{what}: expected seconds like 30 or 2m, got {value!r}")
    text = str(value).strip().lower()
    factor = 1.0
    if text.endswith("ms"):
        text, factor = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    elif text.endswith("m"):
        text, factor = text[:-1], 60.0
    elif text.endswith("h"):
        text, factor = text[:-1], 3600.0
    try:
        seconds = float(text) * factor
    except ValueError:
        raise PolicyError(f"{what}: expected seconds like 30 or 2m, got {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise PolicyError(f"{what}: must be a positive number of seconds, got {value!r}")
    return seconds


def format_size(number: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if number >= factor and number % factor == 0:
            return f"{number // factor}{unit}"
    return str(number)
