"""Time, injected: the pure core is handed `now`; only the edge asks a clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol


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


class ClockedTask:
    """Background work the clock starts, one run at a time, that a stop cancels and waits
    for: the store watch's checks and the retention sweeps both run this way."""

    def __init__(
        self,
        clock: Clock,
        work: Callable[[], Coroutine[Any, Any, None]],
        after: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self.clock = clock
        self._work = work
        self._after = after  # told of each run's end, cancelled or not; it may arm again
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self.stopped = False

    @property
    def busy(self) -> bool:
        """A run is due or under way."""
        return self._timer is not None or self._task is not None

    def at(self, when: float) -> None:
        """Run the work once the clock reaches `when`, unless a run is already due or under
        way, or the work has been stopped."""
        if not (self.stopped or self.busy):
            self._timer = self.clock.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.stopped:
            return
        task = asyncio.get_running_loop().create_task(self._work())
        self._task = task
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        self._after(task)

    async def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
