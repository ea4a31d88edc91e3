"""Faults and races: failed writes, shutdown mid-retry, crashes around verify, overload."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from router.daemon import StartError
from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter, base_config, execute

DELAYS = [60, 300, 900, 2340]


def db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


async def nothing_owed(daemon: Daemon, conversation_id: str) -> bool:
    """Every delivery of the conversation is settled on disk, so a later fence cannot undo it."""
    return (await daemon.conversation(conversation_id))["deliveries"] == []


async def bot_state(daemon: Daemon) -> dict[str, Any]:
    _, items = await daemon.get_debug("/debug/integrations")
    return dict(next(i for i in items if i["id"] == "support-bot"))


async def test_parked_deliveries_are_released_when_a_restart_finds_the_bot_active(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    first = await start_router(clock=clock, retry_delays_s=DELAYS, inactive_after_failures=1)
    peers.bot.script = [500]
    for i in range(3):
        await first.customer(f"m{i}", f"m{i}")

    async def parked() -> bool:
        return (await bot_state(first))["parked"] == 3

    await first.until(parked)
    await first.router.stop()
    # As if the daemon died between verify's commit and the release that follows it.
    await execute(
        tmp_path / "router.db",
        "UPDATE integrations SET state = 'active', consecutive_failures = 0",
    )
    second = await start_router(retry_delays_s=DELAYS)
    bodies = await peers.bot.wait_for(3)
    assert [b["Message"] for b in bodies] == ["m0", "m1", "m2"]

    async def released() -> bool:
        return (await bot_state(second))["parked"] == 0

    await second.until(released)


async def test_a_failed_write_sends_nothing_and_marks_the_daemon_degraded(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    # Time stands still: the daemon would recover by itself (test_store_failure.py); what
    # is checked here is that a restart redoes the refused step too.
    daemon = await start_router(clock=ManualClock())
    await execute(
        tmp_path / "router.db",
        "CREATE TRIGGER no_deliveries BEFORE INSERT ON deliveries "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END",
    )
    assert (await daemon.customer("hi", "m1"))[0] == 202

    async def degraded() -> bool:
        return (await daemon.get_debug("/healthz"))[0] == 503

    await daemon.until(degraded)
    _, health = await daemon.get_debug("/healthz")
    assert health["status"] == "degraded"
    assert peers.bot.received == []
    await daemon.router.stop()
    await execute(tmp_path / "router.db", "DROP TRIGGER no_deliveries")
    again = await start_router()
    [got] = await peers.bot.wait_for(1)
    assert got["Message"] == "hi"
    assert await again.get_debug("/healthz") == (200, {"status": "ok"})
    await asyncio.sleep(0.2)  # a second copy would arrive within this
    assert len(peers.bot.received) == 1


async def test_stopping_mid_retry_records_no_attempt_that_was_not_made(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_router(retry_delays_s=[0.01] * 4, inactive_after_failures=10_000)
    peers.bot.script = [500] * 10_000
    await asyncio.gather(*(daemon.customer("hi", f"m{i}", user=f"user-{i}") for i in range(300)))
    await asyncio.sleep(0.2)
    await daemon.router.stop()
    with db(tmp_path / "router.db") as conn:
        errors = {row[0] for row in conn.execute("SELECT last_error FROM deliveries")}
    assert errors <= {None, "HTTP 500"}


async def test_attempts_waiting_for_a_connection_are_not_counted_as_late(
    start_router: StartRouter, peers: Peers
) -> None:
    # Three waves of 64 attempts, 1 s each: counted from the request, the third would be late;
    # each attempt alone has 1.5 s of margin, for a busy machine.
    daemon = await start_router(timeout_s=2.5, inactive_after_failures=1)
    peers.bot.script = [("slow", 1.0)] * 150
    results = await asyncio.gather(
        *(daemon.customer("hi", f"m{i}", user=f"user-{i}") for i in range(150))
    )
    assert {status for status, _ in results} == {202}
    await peers.bot.wait_for(150, timeout=30)
    state = await bot_state(daemon)
    assert (state["state"], state["consecutive_failures"]) == ("active", 0)


async def test_an_accepted_reply_that_lost_the_race_with_a_handover_is_not_sent(
    daemon: Daemon, peers: Peers
) -> None:
    await daemon.customer("help", "m1")
    [first] = await peers.bot.wait_for(1)
    cid = first["Conversationid"]
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    status, _ = await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "late"})
    assert status in (202, 409)
    [handover] = await peers.ccsp.wait_for(1)
    await daemon.agent(
        {"Event": "Agent message", "Conversationid": handover["Conversationid"], "Message": "hi"}
    )
    [to_customer] = await peers.channel.wait_for(1)
    assert to_customer["Message"] == "hi"
    assert [b["Message"] for b in peers.channel.bodies] == ["hi"]


async def test_replay_is_on_disk_before_it_is_acknowledged(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_router(retry_delays_s=[0.01] * 4, inactive_after_failures=100)
    peers.bot.script = [500] * 5
    await daemon.customer("doomed", "m1")
    _, dead = await daemon.until_dead_letters(1)
    delivery_id = dead["dead_letters"][0]["delivery_id"]
    peers.bot.script = [("slow", 1.0)]
    status, _ = await daemon.admin("POST", f"/v1/admin/dead-letters/{delivery_id}/replay")
    assert status == 202
    with db(tmp_path / "router.db") as conn:
        row = conn.execute(
            "SELECT status FROM deliveries WHERE delivery_id = ?", (delivery_id,)
        ).fetchone()
    assert row is None or row[0] != "dead"
    status, body = await daemon.admin("POST", f"/v1/admin/dead-letters/{delivery_id}/replay")
    assert (status, body["error"]) == (404, "unknown_dead_letter")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/dead-letters/99999999999999999999/replay",
        "/v1/admin/dead-letters/0/replay",
        "/v1/admin/dead-letters/-3/replay",
    ],
)
async def test_out_of_range_ids_are_400(daemon: Daemon, path: str) -> None:
    status, body = await daemon.admin("POST", path)
    assert (status, body["error"]) == (400, "invalid_request")


async def test_out_of_range_cursor_is_400(daemon: Daemon) -> None:
    status, body = await daemon.get_debug("/debug/dead-letters?cursor=99999999999999999999")
    assert (status, body["error"]) == (400, "invalid_request")


async def test_concurrent_creates_with_one_id_give_one_201_and_409s(
    daemon: Daemon, peers: Peers
) -> None:
    body = {"id": "twin", "name": "Twin", "url": peers.bot.url, "access_token": "t"}
    results = await asyncio.gather(
        *(daemon.admin("POST", "/v1/admin/integrations", body) for _ in range(4))
    )
    assert sorted(status for status, _ in results) == [201, 409, 409, 409]


async def test_tokens_with_control_characters_are_refused(daemon: Daemon, peers: Peers) -> None:
    status, body = await daemon.admin(
        "POST",
        "/v1/admin/integrations",
        {"name": "x", "url": peers.bot.url, "access_token": "bad\ntoken"},
    )
    assert (status, body["error"]) == (400, "invalid_request")
    assert "control characters" in body["message"]


async def test_a_bot_removed_from_the_file_can_be_deleted_over_the_api(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    config["integrations"].append(
        {"id": "old-bot", "name": "Old", "url": peers.bot.url, "access_token": "t"}
    )
    first = await start_router(config)
    await first.router.stop()
    config["integrations"].pop()
    second = await start_router(config)
    status, _ = await second.admin("DELETE", "/v1/admin/integrations/old-bot")
    assert status == 204


async def test_a_failed_start_leaves_no_port_open(peers: Peers, tmp_path: Path) -> None:
    from router.config.settings import parse_config
    from router.daemon import Router

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        public_port = probe.getsockname()[1]
        probe.close()
        raw = base_config(peers, tmp_path / "router.db")
        raw["server"]["port"] = public_port
        raw["debug"]["port"] = taken.getsockname()[1]
        router = Router(parse_config(raw, "test.toml"))
        with pytest.raises(StartError, match="cannot listen"):
            await router.start()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", public_port)


async def test_after_a_failed_write_later_steps_wait_and_are_redone_in_order(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_router(clock=ManualClock())  # no recovery before the restart
    await daemon.customer("first", "m1")
    [first] = await peers.bot.wait_for(1)
    await daemon.until(lambda: nothing_owed(daemon, first["Conversationid"]))
    await execute(
        tmp_path / "router.db",
        "CREATE TRIGGER no_sessions BEFORE INSERT ON ccsp_sessions "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END",
    )
    assert (await daemon.bot({"eventid": "1002", "conversation_id": first["Conversationid"]}))[
        0
    ] == 202

    async def degraded() -> bool:
        return (await daemon.get_debug("/healthz"))[0] == 503

    await daemon.until(degraded)
    assert (await daemon.customer("after", "m2"))[0] == 202
    await daemon.router.stop()
    assert peers.ccsp.received == []
    assert [b["Message"] for b in peers.bot.bodies] == ["first"]
    rows = await execute(
        tmp_path / "router.db", "DROP TRIGGER no_sessions", "SELECT state FROM conversations"
    )
    route = rows[0][0]
    assert b'"route":"bot"' in route
    await start_router()
    handover, to_agent = await peers.ccsp.wait_for(2)
    assert handover["Event"] == "Handover"
    assert (to_agent["Message"], to_agent["Conversationid"]) == (
        "after",
        handover["Conversationid"],
    )
    _, copy = await peers.bot.wait_for(2)
    assert (copy["Message"], copy["ConversationType"]) == ("after", "CCSP")
