"""One timer per connection for a deadline that moves with every request on it.

A keep-alive connection's requests each have a deadline (the public port's header and body
deadlines, the client's answer deadline). Pushing a timer onto the loop's heap for each one
and cancelling the last costs the loop per request; here the timer is moved lazily instead.
One armed for an earlier deadline stays, and when it fires before the deadline in force it
arms itself again for it.

The time the timer fires is kept here rather than read back from its handle, which is a
call, and which not every event loop's handle answers (uvloop's, for a time already past).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["LazyDeadline"]


class LazyDeadline:
    __slots__ = ("_deadline", "_late", "_loop", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.Handle | None = None
        self._when = 0.0  # when the armed timer fires
        self._deadline = 0.0  # the deadline in force, when `_late` is set
        self._late: Callable[[], None] | None = None

    def arm(self, deadline: float, late: Callable[[], None]) -> None:
        """`late` is called once the loop's clock reaches `deadline`, unless it is cleared or
        armed again before."""
        self._deadline, self._late = deadline, late
        timer = self._timer
        if timer is not None:
            if self._when <= deadline:
                return
            timer.cancel()
        self._when = deadline
        self._timer = self._loop.call_at(deadline, self._fire)

    def clear(self) -> None:
        """No deadline in force: an armed timer fires to no effect, or serves the next one."""
        self._late = None

    def cancel(self) -> None:
        """Nothing left to guard: the timer goes now, and what it holds with it."""
        self._late = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        late = self._late
        if late is None:
            return
        if self._when < self._deadline:  # armed for an earlier deadline: wait for this one
            self._when = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._fire)
            return
        self._late = None
        late()
