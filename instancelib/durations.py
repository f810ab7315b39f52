"""Durations callers pass (timeouts, intervals): finite numbers of seconds, checked once.

``nan`` and ``inf`` pass a ``> 0`` test and then break a deadline, a poll or
a socket timeout far from the caller; they are refused here, where the
caller can see which argument was wrong.
"""

from __future__ import annotations

import math

from instancelib.errors import InvalidArgument

__all__ = ["optional_seconds", "seconds"]

# A bound well past any real wait, and still within what poll() and socket timeouts take.
MAX_SECONDS = 10 * 365 * 24 * 3600


def seconds(value: object, what: str, *, allow_zero: bool = False) -> float:
    """``value`` as seconds: a finite number > 0 (>= 0 with ``allow_zero``).

    Raises:
        InvalidArgument: not a number, negative (or zero), infinite, NaN or absurdly large.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{what} must be a number of seconds (got {value!r})")
    number = float(value)
    if not math.isfinite(number) or (number < 0 if allow_zero else number <= 0):
        limit = ">= 0" if allow_zero else "> 0"
        raise InvalidArgument(f"{what} must be a finite number of seconds {limit} "
                              f"(got {value!r})")
    if number > MAX_SECONDS:
        raise InvalidArgument(f"{what} of {number:g} s is absurd (at most {MAX_SECONDS} s)")
    return number


def optional_seconds(value: object, what: str) -> float | None:
    """``None`` (no limit), or ``seconds(value, what, allow_zero=True)``."""
    return None if value is None else seconds(value, what, allow_zero=True)
