"""What a configuration reload writes: one transaction that first checks, then writes.

Whether something taken out of the file is still owed deliveries is decided in the same
transaction that deletes it, on the writer thread, behind every write queued before it: a
delivery a conversation saved just before the reload is counted, and none can be saved in
between the check and the delete. Integrations from the file are then written as at
start-up (the file wins for what it sets, state and failure counts stay), and each CCSP's
webhook token is kept or pinned, so webhook URLs already handed out stay valid.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from router.config.settings import CcspConfig, IntegrationConfig
from router.io.integrations import Integration
from router.io.records import (
    delete_integration,
    open_sessions_with,
    owed_to,
    save_configured_integrations,
    webhook_token,
)

__all__ = ["ReloadWrites", "ReloadWritten", "Removal", "removal_blockers", "write_reload"]


@dataclass(frozen=True)
class Removal:
    """A destination the new file no longer has: `kind` as deliveries name it (`bot`,
    `ccsp`, `flow`, `channel`), `table` as the file does."""

    kind: str
    table: str
    item_id: str


@dataclass(frozen=True)
class ReloadWrites:
    integrations: tuple[IntegrationConfig, ...]
    ccsps: tuple[CcspConfig, ...]
    removals: tuple[Removal, ...]


@dataclass(frozen=True)
class ReloadWritten:
    """Either `blockers` (nothing was written) or what is now stored: every integration of
    the file with its state and failure count, and each CCSP's webhook token."""

    blockers: tuple[str, ...] = ()
    integrations: tuple[tuple[Integration, str, int], ...] = ()
    ccsp_tokens: dict[str, str] = field(default_factory=dict)


def write_reload(
    conn: sqlite3.Connection, writes: ReloadWrites, new_token: Callable[[], str], now: float
) -> ReloadWritten:
    blockers = tuple(removal_blockers(conn, writes.removals))
    if blockers:
        return ReloadWritten(blockers)
    for removal in writes.removals:
        if removal.kind == "bot":
            delete_integration(conn, removal.item_id)
    configured = tuple(
        (i.id, i.name, i.url, i.access_token, i.webhook_token) for i in writes.integrations
    )
    ids = {i.id for i in writes.integrations}
    rows = save_configured_integrations(conn, configured, new_token, now)
    configured_as = {i.id: i for i in writes.integrations}
    stored = tuple(
        (
            replace(
                Integration.from_row(r),
                signing_secret=configured_as[r["id"]].signing_secret,
                signed_calls=configured_as[r["id"]].signed_calls,
            ),
            str(r["state"]),
            int(r["consecutive_failures"]),
        )
        for r in rows
        if r["id"] in ids
    )
    tokens = {
        c.id: webhook_token(
            conn,
            kind="ccsp",
            item_id=c.id,
            proposed=c.webhook_token or new_token(),
            pinned=c.webhook_token is not None,
        )
        for c in writes.ccsps
    }
    return ReloadWritten(integrations=stored, ccsp_tokens=tokens)


def removal_blockers(conn: sqlite3.Connection, removals: tuple[Removal, ...]) -> list[str]:
    """Why some of `removals` cannot go yet, as the admin API's DELETE would refuse a bot.

    Also read on its own when a file is refused for other reasons, so that the operator
    learns everything wrong with it at once."""
    return [reason for removal in removals for reason in _blockers(conn, removal)]


def _blockers(conn: sqlite3.Connection, removal: Removal) -> list[str]:
    reasons = []
    owed = owed_to(conn, removal.kind, removal.item_id)
    if owed:
        verb = "delivery is" if owed == 1 else "deliveries are"
        reasons.append(
            f"{removal.table}: cannot remove {removal.item_id!r}: {owed} {verb} still owed to it"
        )
    if removal.kind == "ccsp" and (sessions := open_sessions_with(conn, removal.item_id)):
        verb = "agent session is" if sessions == 1 else "agent sessions are"
        reasons.append(
            f"{removal.table}: cannot remove {removal.item_id!r}: {sessions} {verb} still open "
            "with it"
        )
    return reasons
