"""Data kept only as long as needed: the retention sweep, and erasing one customer on request."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from structlog.testing import capture_logs

from router.retention import SWEEP_EVERY_S
from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter, base_config

DAY = 86_400.0


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def kept(path: Path, cid: str) -> dict[str, int]:
    """What the store holds about one conversation."""
    return {
        table: rows(path, f"SELECT count(*) FROM {table} WHERE conversation_id = ?", cid)[0][0]
        for table in ("conversations", "transcript", "deliveries", "ccsp_sessions", "outbound")
    }


def channel_events(path: Path, user: str) -> int:
    return int(
        rows(
            path,
            "SELECT count(*) FROM inbox WHERE source = 'channel' "
            "AND json_extract(dedupe_key, '$[1]') = ?",
            user,
        )[0][0]
    )


async def talk(daemon: Daemon, peers: Peers, user: str, text: str) -> str:
    """A message from `user` that reaches the bot, and the bot's reply to it."""
    before = len(peers.bot.received)
    await daemon.customer(text, f"{user}-{text}", user=user)
    got = (await peers.bot.wait_for(before + 1))[-1]
    cid = str(got["Conversationid"])
    reply = {"eventid": "1001", "conversation_id": cid, "message": f"re: {text}"}
    assert (await daemon.bot(reply))[0] == 202
    return cid


async def erase(daemon: Daemon, asset: str, user: str, token: str | None = None) -> Any:
    path = f"/v1/admin/customers/{quote(asset, safe='')}/{quote(user, safe='')}"
    return await daemon.admin("DELETE", path, **({"token": token} if token else {}))


async def test_erasing_a_customer_removes_everything_kept_about_them_and_says_what(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = await start_router(clock=clock, retry_delays_s=[60, 60, 60, 60])
    store = tmp_path / "router.db"
    closed = await talk(daemon, peers, "u1", "first")
    await peers.channel.wait_for(1)
    assert (await daemon.bot({"eventid": "1002", "conversation_id": closed}))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    session_closed = {"Event": "Close", "Conversationid": handover["Conversationid"]}
    assert (await daemon.agent(session_closed))[0] == 202
    await peers.bot.wait_for(2)  # Agent Session Closed
    assert (await daemon.bot({"Event": "Close", "conversation_id": closed}))[0] == 202
    other = await talk(daemon, peers, "u2", "hello")
    # An open conversation of u1's, resident, with a delivery owed: the bot fails it.
    peers.bot.script = [500]
    before = len(peers.bot.tried)
    await daemon.customer("second", "u1-second", user="u1")

    async def tried() -> bool:
        return len(peers.bot.tried) > before

    await daemon.until(tried)
    [(open_cid,)] = rows(
        store,
        "SELECT conversation_id FROM deliveries WHERE status != 'dead' AND dest_kind = 'bot'",
    )
    assert open_cid != closed
    assert (await erase(daemon, "fb-page-1", "u1", token="wrong"))[0] == 401

    with capture_logs() as logs:
        status, erased = await erase(daemon, "fb-page-1", "u1")
    assert status == 200, erased
    assert (erased["asset"], erased["Userid"]) == ("fb-page-1", "u1")
    assert erased["conversations"] == 2
    assert erased["deliveries"] >= 1 and erased["transcript_entries"] >= 3
    assert erased["agent_sessions"] == 1 and erased["outbound_messages"] >= 1
    assert erased["events"] >= 2  # the customer's two messages
    [line] = [e for e in logs if e["event"] == "customer_erased"]
    assert "u1" not in str(line)  # a log line names the asset, not the person
    for cid in (closed, open_cid):
        assert kept(store, cid) == dict.fromkeys(kept(store, cid), 0)
        assert (await daemon.get_debug(f"/debug/conversations/{cid}"))[0] == 404
    assert channel_events(store, "u1") == 0
    assert sum(kept(store, other).values()) > 0 and channel_events(store, "u2") == 1

    # Its retry falls due: nothing is sent, and the actor did not write it back.
    received = len(peers.bot.received)
    with capture_logs() as logs:
        clock.advance(120)
        assert (await daemon.customer("ping", "u2-ping", user="u2"))[0] == 202
        await peers.bot.wait_for(received + 1)
    assert [b["Message"] for b in peers.bot.bodies[received:]] == ["ping"]
    assert kept(store, open_cid)["conversations"] == 0
    assert not [e for e in logs if e["log_level"] == "error"]
    # The customer comes back: a new conversation, and the same Messageid is new again.
    assert (await daemon.customer("second", "u1-second", user="u1"))[0] == 202
    again = (await peers.bot.wait_for(received + 2))[-1]
    assert again["Conversationid"] not in (closed, open_cid)
    assert (await erase(daemon, "fb-page-1", "nobody"))[0] == 404


async def test_a_user_id_with_any_characters_can_be_erased(daemon: Daemon, peers: Peers) -> None:
    user = "a/b ?é#%"
    await talk(daemon, peers, user, "hi")
    status, erased = await erase(daemon, "fb-page-1", user)
    assert (status, erased["Userid"], erased["conversations"]) == (200, user, 1)
    status, body = await erase(daemon, "fb-page-1", user)
    assert (status, body["error"]) == (404, "unknown_customer")


async def wait_until(daemon: Daemon, check: Any) -> None:
    async def holds() -> bool:
        return bool(check())

    await daemon.until(holds)


async def sweeps_until(daemon: Daemon, clock: ManualClock, check: Any) -> None:
    async def holds() -> bool:
        clock.advance(SWEEP_EVERY_S)
        return bool(check())

    await daemon.until(holds)


async def test_the_sweep_deletes_closed_conversations_and_dead_letters_after_their_age(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    store = tmp_path / "router.db"
    config = base_config(peers, store, retry_delays_s=[1], inactive_after_failures=100)
    config["store"].update(retention_days=1, dead_letter_retention_days=3)
    clock = ManualClock()
    daemon = await start_router(config, clock=clock)
    closed = await talk(daemon, peers, "u1", "bye")
    assert (await daemon.bot({"Event": "Close", "conversation_id": closed}))[0] == 202
    opened = await talk(daemon, peers, "u2", "staying")
    # A closed conversation that still has a dead letter: the bot refused both attempts.
    peers.bot.script = [500, 500]
    await daemon.customer("doomed", "u3-doomed", user="u3")
    await peers.bot.wait_for(len(peers.bot.received))

    async def dead() -> bool:
        clock.advance(1)
        return bool(rows(store, "SELECT 1 FROM deliveries WHERE status = 'dead'"))

    await daemon.until(dead)
    [(lettered,)] = rows(store, "SELECT conversation_id FROM deliveries WHERE status = 'dead'")
    assert (await daemon.bot({"Event": "Close", "conversation_id": lettered}))[0] == 202
    await wait_until(
        daemon, lambda: not rows(store, "SELECT 1 FROM deliveries WHERE status != 'dead'")
    )

    with capture_logs() as logs:
        clock.advance(DAY + SWEEP_EVERY_S)
        await wait_until(daemon, lambda: kept(store, closed)["conversations"] == 0)
        await wait_until(daemon, lambda: any(e["event"] == "retention_sweep" for e in logs))
    [swept] = [e for e in logs if e["event"] == "retention_sweep"]
    assert swept["conversations"] == 1 and swept["events"] >= 1
    assert kept(store, closed) == dict.fromkeys(kept(store, closed), 0)
    assert kept(store, opened)["conversations"] == 1  # open: kept, however old
    assert kept(store, lettered)["conversations"] == 1  # its dead letter is younger than 3 days
    assert channel_events(store, "u1") == 0  # handled a day ago: no longer a duplicate key

    # The dead letter goes, then its conversation. Each sweep arms the next only once it has
    # finished, on the clock as it then reads: the clock moves a sweep at a time until then.
    clock.advance(2 * DAY)
    await sweeps_until(daemon, clock, lambda: not rows(store, "SELECT 1 FROM deliveries"))
    await sweeps_until(daemon, clock, lambda: kept(store, lettered)["conversations"] == 0)
    assert kept(store, opened)["conversations"] == 1
    assert rows(store, "SELECT count(*) FROM inbox WHERE status = 'pending'") == [(0,)]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("retention_days", -1, "must be at least 0"),
        ("dead_letter_retention_days", "30", "must be a number"),
    ],
)
def test_retention_days_are_checked(
    key: str, value: Any, reason: str, peers: Peers, tmp_path: Path
) -> None:
    from router.config.settings import ConfigError, parse_config

    config = base_config(peers, tmp_path / "router.db")
    config["store"][key] = value
    with pytest.raises(ConfigError) as refused:
        parse_config(config, "test.toml")
    [problem] = refused.value.problems
    assert problem.startswith(f"test.toml: store.{key}: ") and reason in problem, problem


def test_retention_is_off_unless_set(peers: Peers, tmp_path: Path) -> None:
    from router.config.settings import parse_config

    config = parse_config(base_config(peers, tmp_path / "router.db"), "test.toml")
    assert (config.store.retention_days, config.store.dead_letter_retention_days) == (0, 0)
