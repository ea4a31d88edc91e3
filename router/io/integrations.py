"""Bot integrations: from the config file and from the admin API, kept in the store.

The in-memory map serves authentication on every bot webhook without a disk read; every
change is written to the store first and mirrored here once durable.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from router.config.settings import IntegrationConfig
from router.io.ids import new_id, new_token
from router.io.records import (
    delete_integration,
    insert_integration,
    integration_rows,
    save_configured_integrations,
    save_signing_secret,
    set_webhook_token,
    signing_secrets,
    update_integration,
)
from router.io.store import Store

Origin = Literal["config", "admin"]


@dataclass(frozen=True)
class Integration:
    id: str
    name: str
    url: str
    access_token: str
    webhook_token: str
    origin: Origin
    signing_secret: str | None = None  # never shown; its deliveries are signed with it
    signed_calls: bool = False  # and its calls must be signed with it (from the file)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Integration:
        return cls(
            row["id"],
            row["name"],
            row["url"],
            row["access_token"],
            row["webhook_token"],
            row["origin"],
        )


def slug(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "bot"
    return f"{base}-{new_id()[:8]}"


class Integrations:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.items: dict[str, Integration] = {}

    async def load(self, configured: tuple[IntegrationConfig, ...]) -> None:
        """The file wins for what it sets; state, counts and kept tokens stay from the store."""

        rows_in = tuple((i.id, i.name, i.url, i.access_token, i.webhook_token) for i in configured)
        now = time.time()

        def upsert(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], dict[str, str]]:
            return save_configured_integrations(conn, rows_in, new_token, now), signing_secrets(
                conn
            )

        rows, stored = await self.store.write(upsert)
        from_file = {i.id: i for i in configured}
        self.items = {}
        for row in rows:
            found = Integration.from_row(row)
            configured_as = from_file.get(found.id)
            if configured_as is None:
                found = replace(found, signing_secret=stored.get(found.id))
            else:
                found = replace(
                    found,
                    signing_secret=configured_as.signing_secret,
                    signed_calls=configured_as.signed_calls,
                )
            self.items[found.id] = found

    def adopt(self, stored: tuple[Integration, ...], removed: tuple[str, ...]) -> None:
        """A reload's writes, once durable. Item by item, not the whole map: one created over
        the admin API while the reload was being written stays."""
        for integration in stored:
            self.items[integration.id] = integration
        for item_id in removed:
            self.items.pop(item_id, None)

    async def create(
        self,
        name: str,
        url: str,
        access_token: str,
        item_id: str | None,
        signing_secret: str | None = None,
    ) -> Integration:
        integration = Integration(
            item_id or slug(name), name, url, access_token, new_token(), "admin", signing_secret
        )

        token, now = integration.webhook_token, time.time()

        def write(conn: sqlite3.Connection) -> None:
            insert_integration(conn, integration.id, name, url, access_token, token, now)
            save_signing_secret(conn, integration.id, signing_secret)

        await self.store.write(write)
        self.items[integration.id] = integration
        return integration

    async def update(self, item_id: str, changes: Mapping[str, str | None]) -> Integration:
        """`signing_secret` None in `changes` removes it; left out, it stays."""
        current = self.items[item_id]  # KeyError: deleted meanwhile
        updated = replace(
            current,
            name=changes.get("name") or current.name,
            url=changes.get("url") or current.url,
            access_token=changes.get("access_token") or current.access_token,
            signing_secret=changes.get("signing_secret", current.signing_secret),
        )

        def write(conn: sqlite3.Connection) -> bool:
            if "signing_secret" in changes:
                save_signing_secret(conn, item_id, updated.signing_secret)
            return update_integration(
                conn, item_id, updated.name, updated.url, updated.access_token
            )

        if not await self.store.write(write) or item_id not in self.items:
            raise KeyError(item_id)  # deleted while this change was being written
        self.items[item_id] = updated
        return updated

    async def new_webhook_token(self, item_id: str) -> Integration:
        """A fresh webhook token, durable before it is used or shown."""
        updated = replace(self.items[item_id], webhook_token=new_token())
        written = await self.store.write(
            lambda conn: set_webhook_token(conn, item_id, updated.webhook_token)
        )
        if not written or item_id not in self.items:
            raise KeyError(item_id)  # deleted while the token was being written
        self.items[item_id] = replace(self.items[item_id], webhook_token=updated.webhook_token)
        return self.items[item_id]

    async def delete(self, item_id: str) -> None:
        await self.store.write(lambda conn: delete_integration(conn, item_id))
        self.items.pop(item_id, None)

    async def health(self) -> dict[str, dict[str, Any]]:
        """State and failure count as last written by the integration actors."""
        rows = await self.store.read(integration_rows)
        return {
            row["id"]: {"state": row["state"], "consecutive_failures": row["consecutive_failures"]}
            for row in rows
        }
