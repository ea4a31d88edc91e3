"""The store's schema is versioned: an older file is migrated step by step, a newer one is
refused with a clear message instead of being read half-understood."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from router.daemon import StartError
from router.domain.state import TRANSCRIPT_LENGTH
from router.io.records import AppendTranscript, apply_writes, transcript
from router.io.store import MIGRATIONS, connect, migrate
from tests.conftest import Peers, StartRouter, base_config

# The tables as the first release wrote them: no schema version, fewer columns.
UNVERSIONED = """
CREATE TABLE inbox (
    inbox_id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, source_id TEXT NOT NULL,
    dedupe_key TEXT, body BLOB, status TEXT NOT NULL DEFAULT 'pending', received_at REAL NOT NULL,
    UNIQUE (source, source_id, dedupe_key)
);
CREATE TABLE deliveries (
    delivery_id INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL, dest_kind TEXT NOT NULL,
    dest_id TEXT NOT NULL, body BLOB NOT NULL, created_at REAL NOT NULL,
    attempts INTEGER NOT NULL, status TEXT NOT NULL, next_attempt_at REAL, last_error TEXT
);
INSERT INTO inbox (source, source_id, dedupe_key, body, status, received_at)
VALUES ('channel', 'fb-page-1', 'k', NULL, 'done', 1.0);
"""


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_a_new_store_starts_at_the_latest_version(
    start_router: StartRouter, tmp_path: Path
) -> None:
    await start_router()
    assert version(tmp_path / "router.db") == len(MIGRATIONS)


async def test_an_unversioned_store_is_migrated_and_keeps_its_rows(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(UNVERSIONED)
    daemon = await start_router(base_config(peers, path))
    assert version(path) == len(MIGRATIONS)
    assert {"reason", "parked_at"} <= columns(path, "deliveries")
    assert {"conversation_id", "error"} <= columns(path, "inbox")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 1
    status, _ = await daemon.customer("hi", "m1")
    assert status == 202


async def test_a_store_from_a_newer_router_is_refused(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StartError, match="newer router"):
        await start_router(base_config(peers, path))


async def test_transcripts_kept_in_the_conversation_move_to_their_own_rows(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    path = tmp_path / "v1.db"
    state = {
        "conversation_id": "c-1",
        "asset": "fb-page-1",
        "channel": "FB",
        "user": "u1",
        "service": "support",
        "mode": "bot_ccsp",
        "bot": "support-bot",
        "ccsp": "agents",
        "flow": None,
        "created_at": 1.0,
        "transcript": [{"From": "customer", "Message": "hello", "MessageType": "text"}],
    }
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")
        MIGRATIONS[0](conn)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO conversations VALUES ('c-1', 'k', 'open', ?, 1.0, 1.0)",
            (orjson.dumps(state),),
        )
        conn.execute("COMMIT")
    daemon = await start_router(base_config(peers, path))
    conversation = await daemon.conversation("c-1")
    assert [t["Message"] for t in conversation["transcript"]] == ["hello"]
    assert version(path) == len(MIGRATIONS)


def test_only_a_conversations_last_messages_stay_in_its_transcript(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.db")
    migrate(conn)
    for n in range(TRANSCRIPT_LENGTH + 5):
        for cid in ("c-1", "c-2"):
            apply_writes(conn, (AppendTranscript(cid, {"Message": f"{cid} {n}"}),))
    kept = range(5, TRANSCRIPT_LENGTH + 5)
    for cid in ("c-1", "c-2"):
        rows = conn.execute(
            "SELECT entry FROM transcript WHERE conversation_id = ? ORDER BY seq", (cid,)
        ).fetchall()
        assert [orjson.loads(r[0])["Message"] for r in rows] == [f"{cid} {n}" for n in kept]
        assert [e["Message"] for e in transcript(conn, cid)] == [f"{cid} {n}" for n in kept]
    conn.close()
