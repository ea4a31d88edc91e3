"""Time, injected: the pure core is handed `now`; only the edge asks a clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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
