"""A clock the test drives: time stands still until `advance` moves it and fires timers."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class ManualTimer:
    def __init__(self, at: float) -> None:
        self.at = at
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    def __init__(self, start: float = 1_800_000_000.25) -> None:
        self.t = start
        self._heap: list[tuple[float, int, ManualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def call_at(self, at: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(at)
        heapq.heappush(self._heap, (at, next(self._seq), timer, callback))
        return timer

    def pending(self) -> list[float]:
        """When the timers still to fire are due, soonest first, relative to now."""
        return sorted(round(at - self.t, 6) for at, _, t, _ in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> int:
        """Move time on and fire every timer now due; returns how many fired."""
        self.t += seconds
        fired = 0
        while self._heap and self._heap[0][0] <= self.t:
            _, _, timer, callback = heapq.heappop(self._heap)
            if not timer.cancelled:
                fired += 1
                callback()
        return fired
