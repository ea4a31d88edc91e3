"""Which secrets are good right now: the one owner of that answer for every check, inbound
and outbound.

The current values live where they always did (the config, the store's integrations and
CCSP webhook tokens); this holds the values taken out of use and still in their overlap,
learns of a replacement by comparing every secret before and after a change (a reload, an
admin call), and keeps the overlaps on disk so a restart within one keeps it.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import structlog
from yarl import URL

from router.domain.endpoint_state import destination_states
from router.domain.rotation import ORIGIN, Overlaps, Slot, moved, replaced
from router.io.health import WriteRefused
from router.io.records import retired_secrets, save_retired_secrets

if TYPE_CHECKING:
    from router.daemon import Router

__all__ = ["SecretRotation"]


class SecretRotation:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.overlaps = Overlaps()
        self.log = structlog.get_logger("router.rotation")

    async def load(self) -> None:
        now = self.router.clock.now()
        self.overlaps = Overlaps(await self.router.store.read(lambda c: retired_secrets(c, now)))
        if self.overlaps.owners_gone(self.slots()):  # owners the file lost while it was down
            await self._save(now)  # or one added back later would inherit their old values

    def slots(self) -> dict[Slot, str | None]:
        """Every secret in use, by slot; None where an owner has none of that kind."""
        router = self.router
        found: dict[Slot, str | None] = {("admin", ""): router.config.admin_token}
        for integration in router.integrations.items.values():
            key = f"bot:{integration.id}"
            found[("webhook", key)] = integration.webhook_token
            found[("token", key)] = integration.access_token
            found[("signing", key)] = integration.signing_secret
            found[(ORIGIN, key)] = _origin(integration.url)
        for ccsp_id, token in router.ccsp_tokens.items():
            found[("webhook", f"ccsp:{ccsp_id}")] = token
        for state in destination_states(router.config):
            key = state.dest.key
            found[("token", key)] = state.access_token
            found[("signing", key)] = state.signing_secret
            found[(ORIGIN, key)] = _origin(state.url)
        return found

    def accepted(self, kind: str, owner: str, current: str | None) -> tuple[str, ...]:
        return self.overlaps.accepted(kind, owner, current, self.router.clock.now())

    def retired(self, kind: str, owner: str) -> tuple[str, ...]:
        return self.overlaps.values(kind, owner, self.router.clock.now())

    async def changed(self, before: dict[Slot, str | None], overlap_s: float | None = None) -> None:
        """Call at once after a change is applied, before anything awaits: the values it
        replaced stay good from the same instant the new ones are. An overlap of 0 ends
        every earlier value of a replaced secret as well (a secret that leaked)."""
        now = self.router.clock.now()
        overlap = self.router.config.secret_overlap_s if overlap_s is None else overlap_s
        after = self.slots()
        ended = [
            slot
            for slot, old in before.items()
            if slot in after and after[slot] != old and overlap <= 0 and slot[0] != ORIGIN
        ]
        ended += [("token", owner) for owner in moved(before, after)]
        for kind, owner in ended:
            if self.overlaps.values(kind, owner, now):
                self.log.info("secret_overlap_ended", kind=kind, owner=owner)
            self.overlaps.end(kind, owner, keep=after.get((kind, owner)))
        for row in replaced(before, after, now, overlap):
            self.overlaps.add(row)
            self.log.info("secret_retired", kind=row.kind, owner=row.owner, until=row.until)
        self.overlaps.owners_gone(after)
        self.overlaps.prune(now)
        await self._save(now)

    async def _save(self, now: float) -> None:
        rows = self.overlaps.rows(now)
        try:
            await self.router.store.write(lambda c: save_retired_secrets(c, rows))
        except (sqlite3.Error, WriteRefused) as exc:
            # The change itself stands; only a restart within the overlap would end it early.
            self.log.error("secret_overlaps_not_saved", error=str(exc))


def _origin(url: str) -> str:
    try:
        return str(URL(url).origin())
    except ValueError:
        return url
