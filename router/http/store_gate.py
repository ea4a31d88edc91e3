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
from collections.abc import Callable
from contextvars import ContextVar

import structlog
from aiohttp import web

from router.http.inbound import InputError
from router.http.util import Handler, error_response, redact_path
from router.io.health import StoreHealth, WriteRefused

__all__ = ["RETRY_AFTER_S", "StoreGate", "StoreUnavailable"]

RETRY_AFTER_S = 2  # the store is tried again every second
CODE = "store_unavailable"
READS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN = "/v1/admin/"

# Whether the request running in this task was admitted; each request is its own task.
_admitted: ContextVar[bool] = ContextVar("store_gate_admitted", default=False)
_log = structlog.get_logger("router.http")


class StoreUnavailable(InputError):
    def __init__(self, message: str) -> None:
        super().__init__(503, CODE, message)


class StoreGate:
    def __init__(self, health: StoreHealth, on_error: Callable[[int], None]) -> None:
        self.health = health
        self.on_error = on_error
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
        token = _admitted.set(False)
        try:
            if request.method not in READS:
                refused = self.refusal()
                if refused is not None:
                    raise refused
                if request.path.startswith(ADMIN):
                    self.admit()
            return await handler(request)
        except StoreUnavailable as exc:
            return self._unavailable(exc.message)
        except (sqlite3.Error, WriteRefused) as exc:
            # The request's own write (or the read it needed) failed: on disk or not, it is
            # not acknowledged, and the caller may safely send it again.
            _log.warning("store_unavailable", path=redact_path(request.path), error=str(exc))
            return self._unavailable(f"the store could not commit: {exc}")
        finally:
            if _admitted.get():
                self._release()
            _admitted.reset(token)

    def _unavailable(self, message: str) -> web.Response:
        self.on_error(503)
        response = error_response(503, CODE, message)
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The answer to a door whose own write failed."""
    return StoreUnavailable(f"the store could not commit: {exc}")
