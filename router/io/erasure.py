"""What the store forgets: data kept only as long as it is needed, and a customer on request.

Kept apart from `records.py`, whose rows the router's routing depends on: these statements
delete. Each runs in a small batch through the writer, so intake never waits long behind
one, and each counts what it removed.

- a closed conversation untouched for `store.retention_days`, once nothing is owed and no
  dead letter of it is left: its row, transcript, agent sessions, the Messageids it sent
  and its poisoned events;
- inbound events handled (`done`, `unrouted`, `rejected`) that long ago: channel events stay
  after they are handled only so that a resend is known as a duplicate;
- dead letters and poisoned events after `store.dead_letter_retention_days`;
- one customer (asset and user), whatever the age: every conversation, open or closed, with
  everything above and every delivery, owed or dead, and each of their channel events.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence

import orjson

from router.domain.state import Conversation

__all__ = [
    "HANDLED",
    "closed_before",
    "customer_conversations",
    "erase_conversations",
    "erase_customer_events",
    "prune_dead_letters",
    "prune_inbox",
    "prune_poisoned",
]

HANDLED = ("done", "unrouted", "rejected")
Found = list[tuple[str, str]]  # (conversation id, identity)


def _prefix_range(prefix: str) -> tuple[str, str]:
    """Every text that starts with `prefix`, as a range an index can walk (SQLite compares
    text byte by byte)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def closed_before(conn: sqlite3.Connection, cutoff: float, limit: int) -> Found:
    """Closed conversations untouched since `cutoff`, owed nothing, with no dead letter."""
    rows = conn.execute(
        "SELECT conversation_id, conv_key FROM conversations c WHERE status = 'closed' "
        "AND updated_at < ? AND NOT EXISTS "
        "(SELECT 1 FROM deliveries d WHERE d.conversation_id = c.conversation_id) "
        "ORDER BY updated_at LIMIT ?",
        (cutoff, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def customer_conversations(conn: sqlite3.Connection, asset: str, user: str) -> Found:
    """Every conversation of one customer of an asset, open or closed, whatever its service."""
    # An identity is the JSON array [asset, user, service, target]: theirs share its start.
    low, high = _prefix_range(orjson.dumps([asset, user]).decode()[:-1] + ",")
    rows = conn.execute(
        "SELECT conversation_id, conv_key FROM conversations WHERE conv_key >= ? AND conv_key < ?",
        (low, high),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def erase_conversations(
    conn: sqlite3.Connection, cids: Sequence[str], closed_before: float | None = None
) -> Counter[str]:
    """Delete the conversations and what is theirs; with `closed_before`, only those still
    closed, untouched since then, owed nothing and without dead letters (as when chosen)."""
    counts: Counter[str] = Counter()
    for cid in cids:
        row = conn.execute(
            "SELECT state, status, updated_at FROM conversations WHERE conversation_id = ?",
            (cid,),
        ).fetchone()
        if row is None:
            continue
        if closed_before is not None and (
            row["status"] != "closed"
            or row["updated_at"] >= closed_before
            or conn.execute("SELECT 1 FROM deliveries WHERE conversation_id = ?", (cid,)).fetchone()
        ):
            continue
        c = Conversation.from_json(orjson.loads(row["state"]))
        for delivery in conn.execute(
            "DELETE FROM deliveries WHERE conversation_id = ? RETURNING status", (cid,)
        ).fetchall():
            counts["dead_letters" if delivery[0] == "dead" else "deliveries"] += 1
        counts["transcript_entries"] += _deleted(
            conn, "DELETE FROM transcript WHERE conversation_id = ?", cid
        )
        counts["agent_sessions"] += _deleted(
            conn, "DELETE FROM ccsp_sessions WHERE conversation_id = ?", cid
        )
        counts["outbound_messages"] += conn.execute(
            "DELETE FROM outbound WHERE asset = ? AND user = ? AND conversation_id = ?",
            (c.asset, c.user, cid),
        ).rowcount
        counts["events"] += _deleted(
            conn, "DELETE FROM inbox WHERE status = 'poisoned' AND conversation_id = ?", cid
        )
        counts["conversations"] += _deleted(
            conn, "DELETE FROM conversations WHERE conversation_id = ?", cid
        )
    return counts


def _deleted(conn: sqlite3.Connection, statement: str, cid: str) -> int:
    return conn.execute(statement, (cid,)).rowcount


def erase_customer_events(
    conn: sqlite3.Connection, asset: str, user: str, events: Iterable[str]
) -> int:
    """The customer's channel events on the asset, handled or not: each is kept under the key
    [event, user, Messageid, …], so the unique index finds them by its start."""
    removed = 0
    for event in events:
        low, high = _prefix_range(orjson.dumps([event, user]).decode()[:-1] + ",")
        removed += conn.execute(
            "DELETE FROM inbox WHERE source = 'channel' AND source_id = ? "
            "AND dedupe_key >= ? AND dedupe_key < ?",
            (asset, low, high),
        ).rowcount
    return removed


def prune_inbox(
    conn: sqlite3.Connection, cutoff: float, after: int, limit: int
) -> tuple[int, int, bool]:
    """One batch of handled events received before `cutoff`, oldest first, from `after`:
    (deleted, where the next batch starts, whether the older rows are all done). Rows come
    in the order they were received, so the first younger one ends the walk."""
    rows = conn.execute(
        "SELECT inbox_id, status, received_at FROM inbox WHERE inbox_id > ? "
        "ORDER BY inbox_id LIMIT ?",
        (after, limit),
    ).fetchall()
    old: list[tuple[int]] = []
    done = len(rows) < limit
    for inbox_id, status, received_at in rows:
        if received_at >= cutoff:
            done = True
            break
        if status in HANDLED:
            old.append((inbox_id,))
        after = inbox_id
    conn.executemany("DELETE FROM inbox WHERE inbox_id = ?", old)
    return len(old), after, done


def prune_dead_letters(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """One batch of dead letters whose delivery was created before `cutoff`."""
    return conn.execute(
        "DELETE FROM deliveries WHERE delivery_id IN (SELECT delivery_id FROM deliveries "
        "WHERE status = 'dead' AND created_at < ? ORDER BY delivery_id LIMIT ?)",
        (cutoff, limit),
    ).rowcount


def prune_poisoned(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """One batch of poisoned events received before `cutoff`."""
    return conn.execute(
        "DELETE FROM inbox WHERE inbox_id IN (SELECT inbox_id FROM inbox "
        "WHERE status = 'poisoned' AND received_at < ? ORDER BY inbox_id LIMIT ?)",
        (cutoff, limit),
    ).rowcount
