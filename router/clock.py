"""Time, injected: the pure core is handed `now`; only the edge asks a clock."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall time and timers; tests drive a manual one instead of sleeping."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def call_at(self, at: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` on the running loop once `now()` reaches `at`."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def call_at(self, at: float, callback: Callable[[], None]) -> Timer:
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, at - self.now()), callback)


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
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")
