"""Log lines an attack would multiply: at most one per interval, with a count.

A client that opens connections without end, or a flood that runs the process out of file
descriptors, would otherwise write a line (or a traceback) per attempt: hundreds of
megabytes a minute, on the disk the store needs. Connections refused, connections closed
for being slow and failed `accept()` calls are each logged when they first happen, then
once per interval with how many there were since the last line.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["INTERVAL_S", "AcceptErrors", "ThrottledLog"]

INTERVAL_S = 10.0

# What asyncio says when accept() fails for want of resources; it then pauses that
# listener for a second and tries again.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_MESSAGES = ("socket.accept() out of system resource", "Error on transport creation")


class ThrottledLog:
    """One kind of event (`event`), logged at `level` at most once per `interval` seconds
    (monotonic time, `now` for tests), each line with `count`: the events since the last."""

    def __init__(
        self,
        event: str,
        *,
        level: str = "warning",
        interval: float = INTERVAL_S,
        logger: str = "router.http",
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.interval = interval
        self.total = 0
        self._level = level
        self._log = structlog.get_logger(logger)
        self._now = now
        self._pending = 0
        self._last: float | None = None

    def hit(self, **fields: Any) -> None:
        """Count one event; log if the interval since the last line has passed. The fields
        of the event that happens to be logged describe the line (the others are counted)."""
        self.total += 1
        self._pending += 1
        now = self._now()
        if self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        count, self._pending = self._pending, 0
        getattr(self._log, self._level)(self.event, count=count, **fields)


class AcceptErrors:
    """The loop's exception handler while the daemon listens: failed `accept()` calls are
    counted and logged throttled, without a traceback; anything else goes to the handler
    that was there before (or the loop's default)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL_S) -> None:
        self.loop = loop
        self.log = ThrottledLog("accept_failed", level="error", interval=interval)
        self._previous = loop.get_exception_handler()

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_accept_error(context):
            exc = context.get("exception")
            self.log.hit(
                error=type(exc).__name__ if exc is not None else context.get("message"),
                errno=getattr(exc, "errno", None),
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


def is_accept_error(context: dict[str, Any]) -> bool:
    message = str(context.get("message", ""))
    if message.startswith(_ACCEPT_MESSAGES):
        return True
    exc = context.get("exception")
    # A failed accept that asyncio does not word itself is raised out of its callback.
    return (
        isinstance(exc, OSError)
        and exc.errno in _RESOURCE_ERRNOS
        and "_accept_connection" in message
    )
