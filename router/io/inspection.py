"""Reads for the debug port: what the store knows about conversations beyond their state.

Kept apart from `records.py`, whose reads and writes the router's own work depends on: these
serve people looking at the daemon, and nothing the router decides reads them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from router.domain.state import Conversation
from router.io.records import conversation_from_row


@dataclass(frozen=True)
class ConversationFilter:
    """Each set field narrows the list; None leaves it open."""

    status: str | None = None
    route: str | None = None
    integration: str | None = None
    user: str | None = None


# The state is orjson bytes; SQLite's JSON functions read it as text.
_FIELD = "json_extract(CAST(state AS TEXT), '$.{}')"


def find_conversations(
    conn: sqlite3.Connection, found: ConversationFilter, limit: int, after: str
) -> list[Conversation]:
    where = ["conversation_id > ?"]
    args: list[Any] = [after]
    if found.status is not None:
        where.append("status = ?")
        args.append(found.status)
    for name, value in (("route", found.route), ("bot", found.integration), ("user", found.user)):
        if value is not None:
            where.append(f"{_FIELD.format(name)} = ?")
            args.append(value)
    rows = conn.execute(
        f"SELECT state FROM conversations WHERE {' AND '.join(where)} "
        "ORDER BY conversation_id LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [c for c in map(conversation_from_row, rows) if c is not None]


def open_conversation_count(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute("SELECT count(*) FROM conversations WHERE status = 'open'").fetchone()[0]
    )


def agent_sessions(conn: sqlite3.Connection, conversation_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT ccsp_conversation_id, ccsp, status, updated_at FROM ccsp_sessions "
        "WHERE conversation_id = ? ORDER BY updated_at",
        (conversation_id,),
    ).fetchall()
    return [dict(r) for r in rows]


def dead_letter_summary(conn: sqlite3.Connection) -> dict[str, tuple[int, str | None]]:
    """Per bot: how many dead letters, and the last error of the newest."""
    rows = conn.execute(
        "SELECT dest_id, count(*) AS n, "
        "(SELECT last_error FROM deliveries d2 WHERE d2.dest_kind = 'bot' "
        " AND d2.dest_id = d.dest_id AND d2.status = 'dead' ORDER BY delivery_id DESC LIMIT 1) "
        "AS last_error FROM deliveries d WHERE dest_kind = 'bot' AND status = 'dead' "
        "GROUP BY dest_id"
    ).fetchall()
    return {r["dest_id"]: (int(r["n"]), r["last_error"]) for r in rows}
