"""Parsing of durations such as ``30s``, ``5m``, ``1h`` or a plain number of seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The number may start or end with its point (".5", "5."), as Python's float() allows.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")

DURATION_HELP = "a number of seconds or a duration such as 500ms, 30s, 5m, 1h or 1d"


def parse_duration(value: object) -> float:
    """Convert a number of seconds or a duration string to seconds.

    Raises ValueError naming the value and the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_HELP}")

    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value)
        match = _DURATION.match(text)
        if match is None and _DURATION.match(text.strip().removeprefix("-")):
            raise ValueError(f"invalid duration {value!r}: expected 0 or more seconds, not a negative duration")
        if match is None:
            raise ValueError(f"invalid duration {value!r}: expected {DURATION_HELP}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]

    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: expected 0 or more seconds, not a negative number")
    return seconds
