"""The rows behind the store: how each kind of record is written and read back."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from router.domain.model import Delivery, Destination
from router.domain.rotation import Retired
from router.domain.state import TRANSCRIPT_LENGTH, CcspSession, Conversation


class SaveConversation(msgspec.Struct, frozen=True):
    conversation: Conversation
    at: float


class SaveDelivery(msgspec.Struct, frozen=True):
    delivery: Delivery


class RemoveDelivery(msgspec.Struct, frozen=True):
    delivery_id: int


class SaveSession(msgspec.Struct, frozen=True):
    session: CcspSession


class SaveOutbound(msgspec.Struct, frozen=True):
    """A message sent to a customer, so the channel's delivery reports find its conversation."""

    asset: str
    user: str
    message_id: str
    conversation_id: str


class InboxDone(msgspec.Struct, frozen=True):
    inbox_id: int
    status: str = "done"


class AppendTranscript(msgspec.Struct, frozen=True):
    """A message for the conversation's transcript; with `prune`, only the last
    TRANSCRIPT_LENGTH stay (the one that deletes a row on another page costs more than the
    append, so a conversation prunes every TRANSCRIPT_PRUNE_EVERY appends)."""

    conversation_id: str
    entry: dict[str, Any]
    prune: bool = True


@dataclass(frozen=True)
class InboxPoisoned:
    """An event its conversation crashed on past the restart intensity: set aside with the
    error, body kept, until an operator replays it."""

    inbox_id: int
    conversation_id: str
    error: str


@dataclass(frozen=True)
class SaveIntegrationState:
    integration_id: str
    state: str
    consecutive_failures: int


Write = (
    SaveConversation
    | SaveDelivery
    | RemoveDelivery
    | SaveSession
    | SaveOutbound
    | InboxDone
    | InboxPoisoned
    | AppendTranscript
    | SaveIntegrationState
)


def apply_writes(conn: sqlite3.Connection, writes: tuple[Write, ...]) -> None:
    for write in writes:
        match write:
            case SaveConversation(conversation=c, at=at):
                conn.execute(
                    "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (conversation_id) DO UPDATE SET "
                    "status = excluded.status, state = excluded.state, "
                    "updated_at = excluded.updated_at",
                    (
                        c.conversation_id,
                        c.key,
                        c.status,
                        orjson.dumps(c.to_json()),
                        c.created_at,
                        at,
                    ),
                )
            case SaveDelivery(delivery=d):
                conn.execute(
                    "INSERT OR REPLACE INTO deliveries (delivery_id, conversation_id, dest_kind, "
                    "dest_id, body, created_at, attempts, status, next_attempt_at, last_error, "
                    "reason, parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        d.delivery_id,
                        d.conversation_id,
                        d.dest.kind,
                        d.dest.id,
                        orjson.dumps(d.body),
                        d.created_at,
                        d.attempts,
                        d.status,
                        d.next_attempt_at,
                        d.last_error,
                        d.reason,
                        d.parked_at,
                    ),
                )
            case RemoveDelivery(delivery_id=delivery_id):
                conn.execute("DELETE FROM deliveries WHERE delivery_id = ?", (delivery_id,))
            case SaveSession(session=s):
                conn.execute(
                    "INSERT OR REPLACE INTO ccsp_sessions VALUES (?, ?, ?, ?, ?)",
                    (s.ccsp_conversation_id, s.ccsp, s.conversation_id, s.status, s.at),
                )
            case SaveOutbound(asset=asset, user=user, message_id=message_id, conversation_id=cid):
                conn.execute(
                    "INSERT OR REPLACE INTO outbound VALUES (?, ?, ?, ?)",
                    (asset, user, message_id, cid),
                )
            case InboxDone(inbox_id=inbox_id, status=status):
                # A channel event's row stays (without its body) so a resend is a duplicate,
                # and so does a signed call's, by its webhook-id; any other is deleted.
                kept = conn.execute(
                    "UPDATE inbox SET status = ?, body = NULL "
                    "WHERE inbox_id = ? AND (source = 'channel' OR dedupe_key IS NOT NULL)",
                    (status, inbox_id),
                ).rowcount
                if not kept:
                    conn.execute("DELETE FROM inbox WHERE inbox_id = ?", (inbox_id,))
            case AppendTranscript(conversation_id=cid, entry=entry, prune=prune):
                conn.execute(
                    "INSERT INTO transcript (conversation_id, entry) VALUES (?, ?)",
                    (cid, orjson.dumps(entry)),
                )
                if prune:
                    conn.execute(_PRUNE_TRANSCRIPT, (cid, TRANSCRIPT_LENGTH))
            case InboxPoisoned(inbox_id=inbox_id, conversation_id=cid, error=error):
                conn.execute(
                    "UPDATE inbox SET status = 'poisoned', conversation_id = ?, error = ? "
                    "WHERE inbox_id = ?",
                    (cid, error, inbox_id),
                )
            case SaveIntegrationState(integration_id=i, state=state, consecutive_failures=n):
                conn.execute(
                    "UPDATE integrations SET state = ?, consecutive_failures = ? WHERE id = ?",
                    (state, n, i),
                )


# Everything older than the conversation's last `?2` messages: one walk down its index to the
# first message to go (a fifth cheaper than taking the minimum of the ones to keep).
_PRUNE_TRANSCRIPT = (
    "DELETE FROM transcript WHERE conversation_id = ?1 AND seq <= ("
    "SELECT seq FROM transcript WHERE conversation_id = ?1 "
    "ORDER BY seq DESC LIMIT 1 OFFSET ?2)"
)


def transcript(conn: sqlite3.Connection, conversation_id: str) -> tuple[dict[str, Any], ...]:
    """The conversation's last messages, oldest first."""
    rows = conn.execute(
        "SELECT entry FROM (SELECT seq, entry FROM transcript WHERE conversation_id = ? "
        "ORDER BY seq DESC LIMIT ?) ORDER BY seq",
        (conversation_id, TRANSCRIPT_LENGTH),
    ).fetchall()
    return tuple(orjson.loads(row[0]) for row in rows)


def inbox_seen(conn: sqlite3.Connection, source: str, source_id: str, dedupe_key: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM inbox WHERE source = ? AND source_id = ? AND dedupe_key = ?",
            (source, source_id, dedupe_key),
        ).fetchone()
        is not None
    )


def insert_inbox(
    conn: sqlite3.Connection,
    source: str,
    source_id: str,
    dedupe_key: str | None,
    body: bytes,
    at: float,
) -> tuple[int, bool]:
    """Store an inbound body; (inbox_id, True) when it is a duplicate already stored."""
    cursor = conn.execute(
        "INSERT INTO inbox (source, source_id, dedupe_key, body, received_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (source, source_id, dedupe_key, body, at),
    )
    if cursor.rowcount == 1:
        assert cursor.lastrowid is not None
        return cursor.lastrowid, False
    row = conn.execute(
        "SELECT inbox_id FROM inbox WHERE source = ? AND source_id = ? AND dedupe_key = ?",
        (source, source_id, dedupe_key),
    ).fetchone()
    return int(row["inbox_id"]), True


def pending_inbox(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM inbox WHERE status = 'pending' ORDER BY inbox_id").fetchall()


def conversation_from_row(row: sqlite3.Row | None) -> Conversation | None:
    return None if row is None else Conversation.from_json(orjson.loads(row["state"]))


def get_conversation(conn: sqlite3.Connection, conversation_id: str) -> Conversation | None:
    return conversation_from_row(
        conn.execute(
            "SELECT state FROM conversations WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
    )


def open_conversation(conn: sqlite3.Connection, key: str) -> Conversation | None:
    return conversation_from_row(
        conn.execute(
            "SELECT state FROM conversations WHERE conv_key = ? AND status = 'open' "
            "ORDER BY created_at DESC LIMIT 1",
            (key,),
        ).fetchone()
    )


def open_keys(conn: sqlite3.Connection) -> tuple[int, Iterator[str]]:
    """How many conversations are open, and their identities, read as they are iterated (by
    the caller, on this connection's thread): a million of them are never all in memory."""
    (count,) = conn.execute("SELECT count(*) FROM conversations WHERE status = 'open'").fetchone()
    rows = conn.execute("SELECT conv_key FROM conversations WHERE status = 'open'")
    return int(count), (str(row[0]) for row in rows)


def get_session(conn: sqlite3.Connection, ccsp_conversation_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM ccsp_sessions WHERE ccsp_conversation_id = ?", (ccsp_conversation_id,)
    ).fetchone()
    return row


def session_with_conversation(
    conn: sqlite3.Connection, ccsp_conversation_id: str
) -> tuple[sqlite3.Row | None, Conversation | None]:
    session = get_session(conn, ccsp_conversation_id)
    if session is None:
        return None, None
    return session, get_conversation(conn, session["conversation_id"])


def outbound_conversation(
    conn: sqlite3.Connection, asset: str, user: str, message_id: str
) -> Conversation | None:
    """The conversation that sent `message_id` to `user` on `asset`, open or closed."""
    row = conn.execute(
        "SELECT c.state FROM outbound o JOIN conversations c USING (conversation_id) "
        "WHERE o.asset = ? AND o.user = ? AND o.message_id = ?",
        (asset, user, message_id),
    ).fetchone()
    return conversation_from_row(row)


def open_sessions(conn: sqlite3.Connection) -> list[Conversation]:
    """Conversations an agent holds: their deadline and idle timers are re-armed at start."""
    rows = conn.execute(
        "SELECT c.state FROM ccsp_sessions s JOIN conversations c USING (conversation_id) "
        "WHERE s.status = 'open'"
    ).fetchall()
    return [c for c in map(conversation_from_row, rows) if c is not None]


def delivery_from_row(row: sqlite3.Row) -> Delivery:
    return Delivery(
        delivery_id=row["delivery_id"],
        conversation_id=row["conversation_id"],
        dest=Destination(row["dest_kind"], row["dest_id"]),
        body=orjson.loads(row["body"]),
        created_at=row["created_at"],
        attempts=row["attempts"],
        status=row["status"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        reason=row["reason"],
        parked_at=row["parked_at"],
    )


def live_deliveries(conn: sqlite3.Connection) -> list[Delivery]:
    """Everything still owed, in the order it was created."""
    rows = conn.execute(
        "SELECT * FROM deliveries WHERE status != 'dead' ORDER BY delivery_id"
    ).fetchall()
    return [delivery_from_row(r) for r in rows]


def conversation_deliveries(conn: sqlite3.Connection, conversation_id: str) -> list[Delivery]:
    rows = conn.execute(
        "SELECT * FROM deliveries WHERE conversation_id = ? ORDER BY delivery_id",
        (conversation_id,),
    ).fetchall()
    return [delivery_from_row(r) for r in rows]


def get_delivery(conn: sqlite3.Connection, delivery_id: int) -> Delivery | None:
    row = conn.execute("SELECT * FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
    return None if row is None else delivery_from_row(row)


def dead_letters(conn: sqlite3.Connection, limit: int, after: int) -> list[Delivery]:
    rows = conn.execute(
        "SELECT * FROM deliveries WHERE status = 'dead' AND delivery_id > ? "
        "ORDER BY delivery_id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [delivery_from_row(r) for r in rows]


def poisoned_events(conn: sqlite3.Connection, limit: int, after: int) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT inbox_id, source, source_id, conversation_id, error, received_at, body "
        "FROM inbox WHERE status = 'poisoned' AND inbox_id > ? ORDER BY inbox_id LIMIT ?",
        (after, limit),
    ).fetchall()
    return rows


def revive_poisoned(conn: sqlite3.Connection, inbox_id: int) -> sqlite3.Row | None:
    """Owed again: pending, so that a restart routes it too; None if it is not poisoned."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT inbox_id, source, source_id, body FROM inbox "
        "WHERE inbox_id = ? AND status = 'poisoned'",
        (inbox_id,),
    ).fetchone()
    if row is not None:
        conn.execute(
            "UPDATE inbox SET status = 'pending', error = NULL WHERE inbox_id = ?", (inbox_id,)
        )
    return row


def max_delivery_id(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(delivery_id) AS m FROM deliveries").fetchone()
    return int(row["m"] or 0)


def parked_counts(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT dest_id, count(*) AS n FROM deliveries WHERE dest_kind = 'bot' "
        "AND status = 'parked' GROUP BY dest_id"
    ).fetchall()
    return {r["dest_id"]: r["n"] for r in rows}


def integration_rows(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM integrations ORDER BY created_at, id").fetchall()


def integration_row(conn: sqlite3.Connection, integration_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM integrations WHERE id = ?", (integration_id,)
    ).fetchone()
    return row


def webhook_token(
    conn: sqlite3.Connection, kind: str, item_id: str, proposed: str, pinned: bool
) -> str:
    """The token kept for (kind, id): a pinned one replaces it, else the first one stays."""
    if pinned:
        conn.execute(
            "INSERT OR REPLACE INTO webhook_tokens VALUES (?, ?, ?)", (kind, item_id, proposed)
        )
        return proposed
    conn.execute("INSERT OR IGNORE INTO webhook_tokens VALUES (?, ?, ?)", (kind, item_id, proposed))
    row = conn.execute(
        "SELECT token FROM webhook_tokens WHERE kind = ? AND id = ?", (kind, item_id)
    ).fetchone()
    return str(row["token"])


def signing_secrets(conn: sqlite3.Connection) -> dict[str, str]:
    """The signing secrets of bots created over the admin API, by id; a file's are in it."""
    rows = conn.execute("SELECT id, token FROM webhook_tokens WHERE kind = 'signing'").fetchall()
    return {row["id"]: row["token"] for row in rows}


def save_signing_secret(conn: sqlite3.Connection, item_id: str, secret: str | None) -> None:
    conn.execute("DELETE FROM webhook_tokens WHERE kind = 'signing' AND id = ?", (item_id,))
    if secret is not None:
        conn.execute("INSERT INTO webhook_tokens VALUES ('signing', ?, ?)", (item_id, secret))


# -- integrations ------------------------------------------------------------------------


def save_configured_integrations(
    conn: sqlite3.Connection,
    configured: tuple[tuple[str, str, str, str, str | None], ...],
    new_token: Callable[[], str],
    now: float,
) -> list[sqlite3.Row]:
    """(id, name, url, access_token, webhook_token or None) from the file: the file wins for
    what it sets; state, counts and a token kept from before stay."""
    for item_id, name, url, access_token, webhook_token in configured:
        row = integration_row(conn, item_id)
        token = webhook_token or (row["webhook_token"] if row else new_token())
        if row is None:
            conn.execute(
                "INSERT INTO integrations (id, name, url, access_token, webhook_token, "
                "origin, created_at) VALUES (?, ?, ?, ?, ?, 'config', ?)",
                (item_id, name, url, access_token, token, now),
            )
        else:
            conn.execute(
                "UPDATE integrations SET name = ?, url = ?, access_token = ?, "
                "webhook_token = ?, origin = 'config' WHERE id = ?",
                (name, url, access_token, token, item_id),
            )
    # Taken out of the file: from now on the operator manages it over the API.
    conn.execute(
        "UPDATE integrations SET origin = 'admin' WHERE origin = 'config' AND id NOT IN "
        f"({', '.join('?' * len(configured))})",
        [item[0] for item in configured],
    )
    return integration_rows(conn)


def insert_integration(
    conn: sqlite3.Connection,
    item_id: str,
    name: str,
    url: str,
    access_token: str,
    webhook_token: str,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO integrations (id, name, url, access_token, webhook_token, origin, "
        "created_at) VALUES (?, ?, ?, ?, ?, 'admin', ?)",
        (item_id, name, url, access_token, webhook_token, now),
    )


def update_integration(
    conn: sqlite3.Connection, item_id: str, name: str, url: str, access_token: str
) -> bool:
    """False when it was deleted meanwhile."""
    return bool(
        conn.execute(
            "UPDATE integrations SET name = ?, url = ?, access_token = ? WHERE id = ?",
            (name, url, access_token, item_id),
        ).rowcount
    )


def set_webhook_token(conn: sqlite3.Connection, item_id: str, token: str) -> bool:
    """False when it was deleted meanwhile."""
    return bool(
        conn.execute(
            "UPDATE integrations SET webhook_token = ? WHERE id = ?", (token, item_id)
        ).rowcount
    )


def delete_integration(conn: sqlite3.Connection, item_id: str) -> None:
    conn.execute("DELETE FROM integrations WHERE id = ?", (item_id,))
    save_signing_secret(conn, item_id, None)


def owed_to_bot(conn: sqlite3.Connection, integration_id: str) -> int:
    """Deliveries a bot is still owed (dead letters aside)."""
    return owed_to(conn, "bot", integration_id)


def owed_to(conn: sqlite3.Connection, dest_kind: str, dest_id: str) -> int:
    """Deliveries a destination (`bot`, `ccsp`, `flow`, `channel`) is still owed: pending,
    in flight, retrying or parked; dead letters aside."""
    row = conn.execute(
        "SELECT count(*) FROM deliveries WHERE dest_kind = ? AND dest_id = ? AND status != 'dead'",
        (dest_kind, dest_id),
    ).fetchone()
    return int(row[0])


def open_sessions_with(conn: sqlite3.Connection, ccsp_id: str) -> int:
    """Agent sessions still open with a CCSP."""
    row = conn.execute(
        "SELECT count(*) FROM ccsp_sessions WHERE ccsp = ? AND status = 'open'", (ccsp_id,)
    ).fetchone()
    return int(row[0])


def revive_dead_letter(conn: sqlite3.Connection, delivery_id: int) -> bool:
    """Owed again, with a fresh schedule; False if it is no longer a dead letter."""
    return bool(
        conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = NULL, "
            "last_error = NULL WHERE delivery_id = ? AND status = 'dead'",
            (delivery_id,),
        ).rowcount
    )


def ping(conn: sqlite3.Connection) -> None:
    """The cheapest read that proves the store answers."""
    conn.execute("SELECT 1").fetchone()


def beat(conn: sqlite3.Connection, at: float) -> None:
    """The smallest real write: whether the store commits again after failing."""
    conn.execute(
        "INSERT INTO heartbeat VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        (at,),
    )


# -- secrets in overlap ------------------------------------------------------------------


def retired_secrets(conn: sqlite3.Connection, now: float) -> list[Retired]:
    rows = conn.execute(
        "SELECT kind, owner, value, until FROM retired_secrets WHERE until > ?", (now,)
    ).fetchall()
    return [Retired(r["kind"], r["owner"], r["value"], r["until"]) for r in rows]


def save_retired_secrets(conn: sqlite3.Connection, rows: tuple[Retired, ...]) -> None:
    """The whole set, replacing what was kept: it is a handful of rows, and expired ones
    leave with it."""
    conn.execute("DELETE FROM retired_secrets")
    conn.executemany(
        "INSERT INTO retired_secrets (kind, owner, value, until) VALUES (?, ?, ?, ?)",
        [(r.kind, r.owner, r.value, r.until) for r in rows],
    )
