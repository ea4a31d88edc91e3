"""Data kept only as long as it is needed: the retention sweep, and erasing one customer.

Both delete conversations that an actor may hold, so both go through the directory first
(`Forget`): a resident actor is evicted with what it held, and until the erase is on disk a
read of those conversations counts as not found, so none is loaded again and written back.
The deletes run in small batches through the store's writer (`router.io.erasure`), each its
own transaction, so intake never waits long behind them.

The sweep runs on the daemon's clock every `SWEEP_EVERY_S`, only when `[store]
retention_days` or `dead_letter_retention_days` is set, and not while the store fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import pykka
import structlog

from actors.messages import Forget, Forgotten
from router.io.clock import ClockedTask
from router.io.erasure import (
    Found,
    closed_before,
    customer_conversations,
    erase_conversations,
    erase_customer_events,
    prune_dead_letters,
    prune_inbox,
    prune_poisoned,
)

if TYPE_CHECKING:
    import sqlite3

    from router.daemon import Router

__all__ = ["BATCH", "SWEEP_EVERY_S", "RetentionSweep", "erase_customer"]

SWEEP_EVERY_S = 300.0
BATCH = 200
DAY_S = 86_400.0

T = TypeVar("T")
_log = structlog.get_logger("router.retention")


async def _forget(router: Router, found: Found) -> None:
    with contextlib.suppress(RuntimeError, pykka.ActorDeadError):  # no actors: nothing held
        await router.core.ask(Forget(tuple(found)), block=False)


def _forgotten(router: Router, found: Found) -> None:
    with contextlib.suppress(RuntimeError, pykka.ActorDeadError):
        router.core.tell(Forgotten(tuple(found)))


async def _erase(router: Router, found: Found, closed_before: float | None) -> Counter[str]:
    """Evict, delete, then let reads find nothing: in that order, so nothing comes back."""
    await _forget(router, found)
    cids = [cid for cid, _ in found]
    try:
        return await router.store.write(lambda c: erase_conversations(c, cids, closed_before))
    finally:
        _forgotten(router, found)


async def erase_customer(
    router: Router, asset: str, user: str, events: tuple[str, ...]
) -> Counter[str]:
    """Every conversation of the customer, open or closed, with their transcripts, agent
    sessions, deliveries (owed or dead) and Messageids sent, and the customer's channel events
    (`events` names their kinds)."""
    found = await router.store.read(lambda c: customer_conversations(c, asset, user))
    counts: Counter[str] = Counter()
    for start in range(0, len(found), BATCH):
        counts += await _erase(router, found[start : start + BATCH], None)
    counts["events"] += await router.store.write(
        lambda c: erase_customer_events(c, asset, user, events)
    )
    _log.info(
        "customer_erased",
        conversation_id=None,  # one customer's, maybe many
        integration=None,
        asset=asset,
        **counts,
    )
    return counts


class RetentionSweep:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._sweeps = ClockedTask(router.clock, self._sweep_logged, lambda _: self._arm())

    def start(self) -> None:
        self._arm()

    async def stop(self) -> None:
        await self._sweeps.stop()

    def _arm(self) -> None:
        store = self.router.config.store
        if store.retention_days or store.dead_letter_retention_days:
            self._sweeps.at(self.router.clock.now() + SWEEP_EVERY_S)

    async def _sweep_logged(self) -> None:
        try:
            counts = await self.sweep()
        except Exception as exc:  # the store failed meanwhile: the next sweep tries again
            _log.warning("retention_sweep_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if counts:
            _log.info("retention_sweep", **counts)

    async def sweep(self) -> Counter[str]:
        """One pass, batch after batch, until nothing older is left."""
        router = self.router
        counts: Counter[str] = Counter()
        if router.store_gate.refusal() is not None:
            return counts  # the store cannot commit: nothing to gain from trying now
        now = router.clock.now()
        days = router.config.store
        if days.retention_days:
            cutoff = now - days.retention_days * DAY_S
            while found := await router.store.read(lambda c: closed_before(c, cutoff, BATCH)):
                erased = await _erase(router, found, cutoff)
                counts += erased
                if not erased["conversations"]:
                    break  # changed since it was chosen: the next sweep looks again
            counts["events"] += await self._prune_inbox(cutoff)
        if days.dead_letter_retention_days:
            cutoff = now - days.dead_letter_retention_days * DAY_S
            for prune, name in ((prune_dead_letters, "dead_letters"), (prune_poisoned, "events")):
                while True:
                    n = await self._write(partial(prune, cutoff=cutoff, limit=BATCH))
                    counts[name] += n
                    if n < BATCH:
                        break
        return +counts

    async def _prune_inbox(self, cutoff: float) -> int:
        deleted, after, done = 0, 0, False
        while not done:
            step = partial(prune_inbox, cutoff=cutoff, after=after, limit=BATCH)
            n, after, done = await self._write(step)
            deleted += n
        return deleted

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        result = await self.router.store.write(work)
        await asyncio.sleep(0)  # intake's writes queue between batches
        return result
