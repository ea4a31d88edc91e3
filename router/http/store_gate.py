"""Intake while the store cannot commit: `503 store_unavailable` with `Retry-After`, at once.

Nothing is acknowledged that is not on disk. While the store is failing (a write failed for
the store's sake and no commit has succeeded since) or the daemon is resuming from it, every
request that would write is answered `503` before its body is read, and a request whose own
write fails gets the same answer, never a 500.

The gate also knows which requests are writing: a door calls `admit()` just before it
queues its write (the admin API's are admitted on arrival), and the request counts until its
answer. Recovery closes the gate and waits for those to finish, so that none of them routes
an event into the actors recovery is replacing, after it read what is pending from the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

import structlog
from aiohttp import web

from router.http.inbound import InputError
from router.http.util import Handler, redact_path
from router.io.health import StoreHealth, WriteRefused

__all__ = ["RETRY_AFTER_S", "StoreGate", "StoreUnavailable"]

RETRY_AFTER_S = 2  # the store is tried again every second
CODE = "store_unavailable"
READS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN = "/v1/admin/"

# Whether the request running in this task was admitted; each request is its own task.
_admitted: ContextVar[bool] = ContextVar("store_gate_admitted", default=False)
_log = structlog.get_logger("router.http")
T = TypeVar("T")


class StoreUnavailable(InputError):
    def __init__(self, message: str) -> None:
        super().__init__(503, CODE, message, headers={"Retry-After": str(RETRY_AFTER_S)})


class StoreGate:
    def __init__(self, health: StoreHealth) -> None:
        self.health = health
        self.recovering = False  # set by the daemon's recovery, on the loop
        self.writing = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def refusal(self) -> StoreUnavailable | None:
        if self.health.replaced is not None:
            return StoreUnavailable(
                "the store file was deleted or replaced under the running daemon; nothing "
                "can be stored until it restarts"
            )
        if self.health.failing:
            return StoreUnavailable(
                "the store cannot commit (disk full, I/O error or read-only); nothing is "
                "accepted that is not on disk"
            )
        if self.recovering:
            return StoreUnavailable("the router is resuming from the store; retry shortly")
        return None

    def admit(self) -> None:
        """Just before a door queues its write: refused while the store cannot take it, and
        counted until the request is answered."""
        refused = self.refusal()
        if refused is not None:
            raise refused
        if not _admitted.get():
            _admitted.set(True)
            self.writing += 1
            self._idle.clear()

    async def drained(self) -> None:
        """Every admitted request has been answered (and has routed what it stored)."""
        await self._idle.wait()

    def _release(self) -> None:
        self.writing -= 1
        if self.writing == 0:
            self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await self.passing(request.method, request.path, lambda: handler(request))

    async def passing(self, method: str, path: str, call: Callable[[], Awaitable[T]]) -> T:
        """One request through the gate: refused at once when it would write while the store
        cannot take it; counted while admitted; a failed write of its own (or the read it
        needed) raised as `StoreUnavailable`."""
        token = _admitted.set(False)
        try:
            if method not in READS:
                refused = self.refusal()
                if refused is not None:
                    raise refused
                if path.startswith(ADMIN):
                    self.admit()
            return await call()
        except (sqlite3.Error, WriteRefused) as exc:
            # On disk or not, it is not acknowledged, and the caller may safely send it again.
            _log.warning("store_unavailable", path=redact_path(path), error=str(exc))
            raise unavailable(exc) from None
        finally:
            if _admitted.get():
                self._release()
            _admitted.reset(token)


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The answer to a door whose own write failed."""
    return StoreUnavailable(f"the store could not commit: {exc}")
