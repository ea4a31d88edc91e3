"""The platform's timestamps: pure formatting of an epoch the caller passes in."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime


def platform_timestamp(epoch: float) -> str:
    """The platform's `YYYY-MM-DD hh:mm:ss.SS` in GMT (hundredths of a second)."""
    # As datetime.fromtimestamp rounds, so the text is the same to the hundredth.
    fraction, whole = math.modf(epoch)
    second, micro = int(whole), round(fraction * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:
        second, micro = second - 1, micro + 1_000_000
    return f"{_second_text(second)}.{micro // 10000:02d}"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    """Formatted once per second: every message sent within it shares the text."""
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_timestamp(epoch: float | None) -> str | None:
    """None for no time, and for one no calendar holds: a view never fails on a date."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return None
