"""Idle conversation actors stop beyond `max_live` and resume from the store unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter, base_config


async def live_actors(daemon: Daemon) -> float:
    _, text = await daemon.get_debug("/metrics")
    resident = 'router_conversation_actors{state="resident"} '
    line = next(x for x in text.splitlines() if x.startswith(resident))
    return float(line.split()[-1])


async def start_small(start_router: StartRouter, peers: Peers, tmp_path: Path) -> Daemon:
    config = base_config(peers, tmp_path / "router.db")
    config["conversations"] = {"max_live": 1}
    return await start_router(config)


async def test_conversations_keep_their_ids_and_order_while_actors_come_and_go(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_small(start_router, peers, tmp_path)
    users = ("ann", "ben", "cal")
    for round_ in range(8):
        for user in users:
            status, _ = await daemon.customer(f"{user} {round_}", f"{user}-{round_}", user=user)
            assert status == 202
    bodies = await peers.bot.wait_for(len(users) * 8)
    for user in users:
        mine = [b for b in bodies if b["Message"].startswith(user)]
        assert [b["Message"] for b in mine] == [f"{user} {i}" for i in range(8)]
        assert len({b["Conversationid"] for b in mine}) == 1
    assert len({b["Conversationid"] for b in bodies}) == 3

    async def settled() -> bool:
        return await live_actors(daemon) == 1

    await daemon.until(settled)


async def test_an_agent_session_survives_its_actor_stopping(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_small(start_router, peers, tmp_path)
    await daemon.customer("help", "a1", user="ann")
    [first] = await peers.bot.wait_for(1)
    await daemon.bot({"eventid": "1002", "conversation_id": first["Conversationid"]})
    [handover] = await peers.ccsp.wait_for(1)
    await daemon.customer("hello", "b1", user="ben")
    await peers.bot.wait_for(2)
    status, _ = await daemon.agent(
        {"Event": "Agent message", "Conversationid": handover["Conversationid"], "Message": "hi"}
    )
    assert status == 202
    [to_ann] = await peers.channel.wait_for(1)
    assert (to_ann["Userid"], to_ann["Message"]) == ("ann", "hi")
    await daemon.customer("still me", "a2", user="ann")
    _, to_agent = await peers.ccsp.wait_for(2)
    assert to_agent["Conversationid"] == handover["Conversationid"]
    assert to_agent["Message"] == "still me"


async def test_a_closed_conversation_stops_its_actor(daemon: Daemon, peers: Peers) -> None:
    await daemon.customer("bye", "m1")
    [first] = await peers.bot.wait_for(1)

    async def running(count: float) -> bool:
        return await live_actors(daemon) == count

    await daemon.until(lambda: running(1))
    await daemon.bot({"Event": "Close", "conversation_id": first["Conversationid"]})
    await daemon.until(lambda: running(0))
    await daemon.customer("back", "m2")
    _, second = await peers.bot.wait_for(2)
    assert second["Conversationid"] != first["Conversationid"]


async def test_a_message_right_after_the_bot_closes_opens_a_new_conversation(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_small(start_router, peers, tmp_path)

    async def delivered(message_id: str) -> dict[str, Any]:
        async def arrived() -> bool:
            return any(b["Messageid"] == message_id for b in peers.bot.bodies)

        await daemon.until(arrived)
        return next(b for b in peers.bot.bodies if b["Messageid"] == message_id)

    for i in range(25):
        user = f"user-{i}"
        await daemon.customer("other", f"other-{i}", user=f"other-{i % 2}")
        await daemon.customer("hi", f"{user}-a", user=user)
        closed = (await delivered(f"{user}-a"))["Conversationid"]
        close = await daemon.bot({"Event": "Close", "conversation_id": closed})
        again = await daemon.customer("again", f"{user}-b", user=user)
        assert (close[0], again[0]) == (202, 202)
        assert (await delivered(f"{user}-b"))["Conversationid"] != closed


async def test_conversations_waiting_on_an_inactive_bot_do_not_keep_actors_running(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db", inactive_after_failures=1)
    config["conversations"] = {"max_live": 2}
    daemon = await start_router(config)
    peers.bot.script = [500]
    users = [f"user-{i}" for i in range(40)]
    for user in users:
        for n in (1, 2):
            assert (await daemon.customer(f"{user} {n}", f"{user}-{n}", user=user))[0] == 202

    async def parked_and_retired() -> bool:
        # An attempt dispatched before the first failure came back still reaches the bot.
        _, items = await daemon.get_debug("/debug/integrations")
        settled = items[0]["parked"] + len(peers.bot.received) == 80
        return settled and await live_actors(daemon) <= 2

    await daemon.until(parked_and_retired)
    status, _ = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert status == 200
    bodies = await peers.bot.wait_for(80)
    for user in users:
        assert [b["Message"] for b in bodies if b["Message"].startswith(f"{user} ")] == [
            f"{user} 1",
            f"{user} 2",
        ]


async def test_a_retry_due_for_a_retired_conversation_brings_it_back(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    config = base_config(peers, tmp_path / "router.db", retry_delays_s=[60, 300, 900, 2340])
    config["conversations"] = {"max_live": 1}
    daemon = await start_router(config, clock=clock)
    peers.bot.script = [500, 500, 500]
    for user in ("ann", "ben", "cal"):
        await daemon.customer(f"hi from {user}", f"{user}-1", user=user)

    async def all_waiting() -> bool:
        return clock.pending() == [60.0, 60.0, 60.0] and await live_actors(daemon) == 1

    await daemon.until(all_waiting)
    assert clock.advance(60) == 3
    bodies = await peers.bot.wait_for(3)
    assert sorted(b["Message"] for b in bodies) == ["hi from ann", "hi from ben", "hi from cal"]
