"""Resuming by itself once the store commits again: no restart, nothing lost, nothing reordered.

A failed write fences routing (`router.io.edge`): that step and every later one are refused,
so the actors' memory has run ahead of the disk. A failing store also closes intake (`503`,
`router.http.store_gate`). From the first failure on, a timer on the daemon's clock checks
every second:

- while the store is failing, it writes the heartbeat row: a real commit, nothing more;
- once one succeeds, or when the store never failed but a step did (a refused constraint),
  it recovers, as a restart would, without closing the ports:

  1. intake is closed (`503`) and the requests that already stored their event finish, so
     each of those is routed by the old actors or replayed below, never both;
  2. every conversation actor is evicted at once (what it held in memory goes), then the
     directory and the endpoints stop, and their writes still queued settle (refused);
  3. the fence lifts and the store is marked healthy: from here on, memory follows disk;
  4. the actors start from the store, owed deliveries resume, agent sessions' timers are
     armed, and the events stored but not yet routed are routed again, oldest first: the
     start-up path (`Router.start_actors`, `Router.restore`);
  5. intake opens.

A recovery after which a write fails again at once is retried after twice the wait, up to a
minute, so a store that commits a heartbeat but not real work is not restarted in a loop. A
store file deleted or replaced under the daemon never recovers: only a restart opens the file
the path names now, and the daemon does not silently start an empty one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import TYPE_CHECKING

import pykka
import structlog

from actors.messages import EvictAll
from router.io.clock import ClockedTask

if TYPE_CHECKING:
    from router.daemon import Router

__all__ = ["MAX_WAIT_S", "PROBE_INTERVAL_S", "StoreWatch"]

PROBE_INTERVAL_S = 1.0
MAX_WAIT_S = 60.0

_log = structlog.get_logger("router.recovery")


def _barrier(conn: sqlite3.Connection) -> None:
    """Nothing: settled once every write queued before it has been."""


class StoreWatch:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.wait = PROBE_INTERVAL_S
        self.recoveries = 0
        self._last_recovery: float | None = None
        self._checks = ClockedTask(router.clock, self._check, self._checked)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def armed(self) -> bool:
        """A check is due or under way."""
        return self._checks.busy

    @property
    def degraded(self) -> bool:
        router = self.router
        return router.store.health.failing or router.edge.fenced or router.store_gate.recovering

    def start(self) -> None:
        """Listen for failures: the store's on its writer thread, the edge's on the loop."""
        self._loop = asyncio.get_running_loop()
        self.router.store.health.listeners.append(self._from_writer)
        self.router.edge.on_fence = self.arm
        if self.degraded:
            self.arm()

    async def stop(self) -> None:
        await self._checks.stop()

    def _from_writer(self) -> None:
        loop = self._loop
        if loop is not None and not self._checks.stopped:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self.arm)

    def arm(self) -> None:
        """Check again after the wait; called on the loop whenever something failed."""
        if self._checks.stopped or self._checks.busy:
            return
        if self.router.store.health.replaced is not None:
            return  # for good: see the module's docstring
        clock = self.router.clock
        now = clock.now()
        if self._last_recovery is not None and now - self._last_recovery < MAX_WAIT_S:
            self.wait = min(self.wait * 2, MAX_WAIT_S)  # it failed again soon after resuming
        elif self._last_recovery is not None:
            self.wait = PROBE_INTERVAL_S
        self._checks.at(now + self.wait)

    def _checked(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            _log.error("store_recovery_failed", error=f"{type(error).__name__}: {error}")
        if self.degraded:
            self.arm()

    async def _check(self) -> None:
        router = self.router
        health = router.store.health
        if health.failing:
            try:
                await router.store.probe()
            except Exception:
                return  # counted by the store; tried again after the wait
        if router.edge.fenced or router.store_gate.recovering:
            await self.recover()
        elif health.failing:
            health.recovered()  # nothing was refused: memory never ran ahead of the disk
            _log.info("store_recovered", failures=health.failures, actors_restarted=False)

    async def recover(self) -> None:
        """The steps of the module's docstring; a failure on the way leaves intake closed
        and the fence up, so the next check starts over."""
        router = self.router
        gate = router.store_gate
        async with router.reloading:
            gate.recovering = True
            await gate.drained()
            with contextlib.suppress(RuntimeError, pykka.ActorDeadError):  # none running
                await router.core.ask(EvictAll(), block=False)
            await router.stop_actors()
            await router.store.write(_barrier)
            # Read while the edge is still fenced: a read that fails leaves it so.
            on_disk = await router.keys_on_disk()
            router.edge.resume()
            router.store.health.recovered()
            try:
                router.start_actors(on_disk)
                await router.restore()
            except BaseException as exc:
                router.edge.fence("recovery_failed", f"{type(exc).__name__}: {exc}")
                raise
            gate.recovering = False
        self.recoveries += 1
        self._last_recovery = router.clock.now()
        _log.info(
            "store_recovered",
            failures=router.store.health.failures,
            actors_restarted=True,
            recoveries=self.recoveries,
        )
