"""Durations written the way people write them: ``90s``, ``15m``, ``1h``, ``7d``.

Windows, TTLs and the allowed lateness are whole microseconds, the resolution of
event times in every path, so the batch and streaming paths compare the same integers.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
_UNITS["d"] = 24 * _UNITS["h"]
_UNITS["w"] = 7 * _UNITS["d"]
_PATTERN = re.compile(r"^(\d+)(us|ms|s|m|h|d|w)$")


def parse_duration(value: str | timedelta, zero: bool = False) -> int | None:
    """Microseconds in a positive (or, with ``zero``, zero) duration; None when not one."""
    if isinstance(value, timedelta):
        exact = value % timedelta(microseconds=1) == timedelta(0)
        micros: int | None = value // timedelta(microseconds=1) if exact else None
    else:
        match = _PATTERN.match(value.strip()) if isinstance(value, str) else None
        micros = int(match.group(1)) * _UNITS[match.group(2)] if match else None
    if micros is None or micros < 0 or (micros == 0 and not zero):
        return None
    return micros


def format_duration(micros: int) -> str:
    """The shortest exact spelling of a duration, e.g. ``7d`` or ``90s``."""
    for unit in ("w", "d", "h", "m", "s", "ms"):
        if micros % _UNITS[unit] == 0:
            return f"{micros // _UNITS[unit]}{unit}"
    return f"{micros}us"
