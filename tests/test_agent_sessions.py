"""Agent sessions end: a Handover nobody answers is abandoned, and closes by the agent, by the
idle timeout and by an operator all return the conversation to the bot, which is told first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.clock import ManualClock
from tests.conftest import ADMIN, Daemon, Peers, StartRouter, base_config

DELAYS = [60, 300, 900, 2340]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def open_bot_conversation(daemon: Daemon, peers: Peers, text: str = "hi") -> str:
    await daemon.customer(text, "m1")
    [first] = await peers.bot.wait_for(1)
    return str(first["Conversationid"])


async def bot_bodies(peers: Peers, count: int) -> list[dict[str, Any]]:
    return await peers.bot.wait_for(count)


async def wait_pending(daemon: Daemon, clock: ManualClock, expected: list[float]) -> None:
    async def due() -> bool:
        return clock.pending() == expected

    await daemon.until(due)


async def wait_due(daemon: Daemon, clock: ManualClock, delay: float) -> None:
    async def due() -> bool:
        return float(delay) in clock.pending()

    await daemon.until(due)


async def answered(daemon: Daemon, cid: str) -> None:
    """The CCSP's 2xx to the Handover has been recorded: no deadline is left."""

    async def check() -> bool:
        conversation = await daemon.conversation(cid)
        return conversation["route"] == "ccsp" and conversation["handover_deadline_at"] is None

    await daemon.until(check)


def idle_config(peers: Peers, tmp_path: Path) -> dict[str, Any]:
    config = base_config(peers, tmp_path / "router.db", retry_delays_s=DELAYS)
    config["ccsp"][0]["session_idle_timeout_s"] = 100
    return config


async def idle_session(
    start_router: StartRouter, peers: Peers, clock: ManualClock, tmp_path: Path
) -> tuple[Daemon, str, str]:
    """A session the CCSP has answered, with a 100 s idle timeout."""
    daemon = await start_router(idle_config(peers, tmp_path), clock=clock)
    cid = await open_bot_conversation(daemon, peers)
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    await answered(daemon, cid)
    return daemon, cid, str(handover["Conversationid"])


async def route_is(daemon: Daemon, cid: str, route: str) -> None:
    async def check() -> bool:
        return (await daemon.conversation(cid))["route"] == route

    await daemon.until(check)


async def test_event_handover_behaves_like_eventid_1002(daemon: Daemon, peers: Peers) -> None:
    cid = await open_bot_conversation(daemon, peers)
    status, body = await daemon.bot(
        {"EVENT": "handover", "Conversation_Id": cid, "queue": "billing", "customparam1": "x"}
    )
    assert (status, body) == (202, {"accepted": True})
    [handover] = await peers.ccsp.wait_for(1)
    assert handover["Event"] == "Handover"
    assert handover["BotConversationid"] == cid
    assert (handover["queue"], handover["customparam1"]) == ("billing", "x")
    # The service's handover rule fires for either form.
    [flow] = await peers.flow.wait_for(1)
    assert (flow["Event"], flow["queue"], flow["customparam1"]) == ("Handover", "billing", "x")
    await route_is(daemon, cid, "ccsp")


async def test_handover_on_a_bot_only_rule_runs_the_services_handover_rule(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    plain = next(s for s in config["services"] if s["id"] == "plain")
    plain["rules"].append({"on": "handover", "action": "invoke_flow", "flow": "crm"})
    daemon = await start_router(config)
    await daemon.customer("hi", "s1", asset="sms-1")
    [first] = await peers.bot.wait_for(1)
    cid = first["Conversationid"]
    status, body = await daemon.bot({"Event": "Handover", "conversation_id": cid, "why": "asked"})
    assert (status, body) == (202, {"accepted": True})
    [flow] = await peers.flow.wait_for(1)
    assert (flow["Event"], flow["Conversationid"], flow["why"]) == ("Handover", cid, "asked")
    assert (await daemon.conversation(cid))["route"] == "bot"
    assert peers.ccsp.received == []


async def test_a_handover_that_becomes_a_dead_letter_returns_the_conversation_to_the_bot(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS, handover_deadline_s=10**6)
    cid = await open_bot_conversation(daemon, peers)
    peers.ccsp.script = [500] * 5
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    await wait_pending(daemon, clock, [60.0, 86_400.0, 10.0**6])
    abandoned = (await daemon.conversation(cid))["ccsp_conversation_id"]
    assert abandoned
    # Customer messages sent to the session meanwhile: the bot gets its CCSP copies.
    await daemon.customer("anyone there?", "m2")
    await daemon.customer("hello??", "m3")
    copies = (await bot_bodies(peers, 3))[1:]
    assert [(b["Messageid"], b["ConversationType"]) for b in copies] == [
        ("m2", "CCSP"),
        ("m3", "CCSP"),
    ]
    for delay in DELAYS:
        await wait_due(daemon, clock, delay)
        clock.advance(delay)
    failed = (await bot_bodies(peers, 4))[3]
    assert failed == {
        "Event": "Handover Failed",
        "Conversationid": cid,
        "ConversationType": "BOT",
        "CCSPConversationid": abandoned,
        "Reason": "HTTP 500",
        "Unanswered": ["m2", "m3"],
        "Channel": "FB",
        "Timestamp": failed["Timestamp"],
    }
    assert peers.ccsp.received == []
    assert peers.ccsp.attempts == 5
    # The Handover and the messages owed to that session are dead letters, not replayable.
    _, dead = await daemon.until_dead_letters(3)
    letters = dead["dead_letters"]
    assert [(d["body"].get("Event"), d["body"].get("Messageid")) for d in letters] == [
        ("Handover", None),
        ("Incoming message", "m2"),
        ("Incoming message", "m3"),
    ]
    assert {d["reason"] for d in letters} == {"session_abandoned"}
    for letter in letters:
        status, body = await daemon.admin(
            "POST", f"/v1/admin/dead-letters/{letter['delivery_id']}/replay"
        )
        assert (status, body["error"]) == (409, "session_abandoned")
    conversation = await daemon.conversation(cid)
    assert (conversation["route"], conversation["ccsp_conversation_id"]) == ("bot", None)
    # The CCSP may no longer speak under the abandoned id.
    status, body = await daemon.agent(
        {"Event": "Agent message", "Conversationid": abandoned, "Message": "sorry, late"}
    )
    assert (status, body["error"]) == (409, "session_abandoned")
    # The next customer message reaches the bot as an ordinary BOT message ...
    await daemon.customer("ok, bot then", "m4")
    after = (await bot_bodies(peers, 5))[4]
    assert (after["Messageid"], after["ConversationType"], after["Conversationid"]) == (
        "m4",
        "BOT",
        cid,
    )
    # ... which may hand over again: a new CCSP id, and this time the CCSP answers.
    assert (await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "ok"}))[
        0
    ] == 202
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [second] = await peers.ccsp.wait_for(1)
    assert second["Event"] == "Handover"
    assert second["Conversationid"] not in (abandoned, cid)
    await route_is(daemon, cid, "ccsp")


async def test_a_handover_unanswered_by_the_deadline_is_abandoned_at_once(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS, handover_deadline_s=30)
    cid = await open_bot_conversation(daemon, peers)
    peers.ccsp.script = [503]
    assert (await daemon.bot({"Event": "Handover", "conversation_id": cid}))[0] == 202
    await wait_pending(daemon, clock, [30.0, 60.0, 86_400.0])
    abandoned = (await daemon.conversation(cid))["ccsp_conversation_id"]
    await daemon.customer("hello?", "m2")
    await bot_bodies(peers, 2)
    clock.advance(30)
    failed = (await bot_bodies(peers, 3))[2]
    assert (failed["Event"], failed["CCSPConversationid"]) == ("Handover Failed", abandoned)
    assert (failed["Reason"], failed["Unanswered"]) == ("HTTP 503", ["m2"])
    conversation = await daemon.conversation(cid)
    assert conversation["route"] == "bot"
    assert [d for d in conversation["deliveries"] if d["destination"] == "ccsp:agents"] == []
    assert [(d["reason"], d["body"].get("Event")) for d in conversation["dead_letters"]] == [
        ("session_abandoned", "Handover"),
        ("session_abandoned", "Incoming message"),
    ]
    # The withdrawn Handover's retry comes to nothing; a new handover is the next attempt.
    clock.advance(60)
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [second] = await peers.ccsp.wait_for(1)
    assert second["Event"] == "Handover"
    assert second["Conversationid"] != abandoned
    assert peers.ccsp.attempts == 2


async def test_agent_close_reaches_the_bot_before_the_next_customer_message(
    daemon: Daemon, peers: Peers
) -> None:
    cid = await open_bot_conversation(daemon, peers)
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    ccsp_id = handover["Conversationid"]
    await route_is(daemon, cid, "ccsp")
    # The customer speaks the moment the agent's Close is accepted.
    assert (await daemon.agent({"Event": "Close", "Conversationid": ccsp_id}))[0] == 202
    assert (await daemon.customer("back to you, bot", "m2"))[0] == 202
    bodies = await bot_bodies(peers, 3)
    closed, message = bodies[1], bodies[2]
    assert list(closed) == [
        "Event",
        "Conversationid",
        "ConversationType",
        "CCSPConversationid",
        "Reason",
        "Channel",
        "Timestamp",
    ]
    assert closed == {
        "Event": "Agent Session Closed",
        "Conversationid": cid,
        "ConversationType": "BOT",
        "CCSPConversationid": ccsp_id,
        "Reason": "agent",
        "Channel": "FB",
        "Timestamp": closed["Timestamp"],
    }
    assert (message["Event"], message["Messageid"]) == ("Incoming message", "m2")
    assert (message["Conversationid"], message["ConversationType"]) == (cid, "BOT")
    await route_is(daemon, cid, "bot")
    assert len(peers.ccsp.received) == 1


async def test_an_idle_session_is_closed_by_the_timeout(
    start_router: StartRouter, peers: Peers, clock: ManualClock, tmp_path: Path
) -> None:
    daemon, cid, ccsp_id = await idle_session(start_router, peers, clock, tmp_path)
    await wait_pending(daemon, clock, [60.0, 100.0])
    clock.advance(60)  # the Handover was answered: its deadline passes without effect
    status, _ = await daemon.agent(
        {"Event": "Agent message", "Conversationid": ccsp_id, "Message": "still with you"}
    )
    assert status == 202
    await peers.channel.wait_for(1)
    clock.advance(40)  # 100 s after the handover, but only 40 s after the agent spoke
    await wait_pending(daemon, clock, [60.0])
    assert (await daemon.conversation(cid))["route"] == "ccsp"
    clock.advance(60)
    [_, close] = await peers.ccsp.wait_for(2)
    assert close == {"Event": "Close", "Conversationid": ccsp_id}
    notice = next(b for b in await bot_bodies(peers, 3) if b["Event"] == "Agent Session Closed")
    assert (notice["Reason"], notice["CCSPConversationid"]) == ("timeout", ccsp_id)
    await route_is(daemon, cid, "bot")
    status, body = await daemon.agent(
        {"Event": "Agent message", "Conversationid": ccsp_id, "Message": "hello?"}
    )
    assert (status, body["error"]) == (409, "conversation_closed")


async def test_the_idle_timer_survives_a_restart(
    start_router: StartRouter, peers: Peers, clock: ManualClock, tmp_path: Path
) -> None:
    first, cid, ccsp_id = await idle_session(start_router, peers, clock, tmp_path)
    await first.router.stop()
    later = ManualClock(clock.now() + 150)  # down past the timeout: it is due on start
    second = await start_router(idle_config(peers, tmp_path), clock=later)
    await wait_pending(second, later, [-50.0])
    later.advance(0)
    [_, close] = await peers.ccsp.wait_for(2)
    assert close == {"Event": "Close", "Conversationid": ccsp_id}
    await route_is(second, cid, "bot")
    notice = next(b for b in await bot_bodies(peers, 2) if b["Event"] == "Agent Session Closed")
    assert (notice["Reason"], notice["CCSPConversationid"]) == ("timeout", ccsp_id)


async def test_an_operator_closes_a_session(daemon: Daemon, peers: Peers) -> None:
    cid = await open_bot_conversation(daemon, peers)
    path = f"/v1/admin/conversations/{cid}/close-session"
    status, body = await daemon.admin("POST", path)
    assert (status, body["error"]) == (409, "no_agent_session")
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    ccsp_id = handover["Conversationid"]
    await route_is(daemon, cid, "ccsp")
    status, body = await daemon.admin("POST", path, token="wrong")
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = await daemon.admin("POST", "/v1/admin/conversations/nope/close-session")
    assert (status, body["error"]) == (404, "unknown_conversation")
    status, body = await daemon.admin("POST", path, token=ADMIN)
    assert (status, body) == (202, {"accepted": True, "CCSPConversationid": ccsp_id})
    [_, close] = await peers.ccsp.wait_for(2)
    assert close == {"Event": "Close", "Conversationid": ccsp_id}
    notice = (await bot_bodies(peers, 2))[1]
    assert (notice["Event"], notice["Reason"]) == ("Agent Session Closed", "operator")
    await route_is(daemon, cid, "bot")
    status, body = await daemon.admin("POST", path)
    assert (status, body["error"]) == (409, "no_agent_session")


async def test_a_handover_answered_after_it_was_abandoned_is_closed_at_the_ccsp(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(
        clock=clock, retry_delays_s=DELAYS, handover_deadline_s=30, timeout_s=5
    )
    cid = await open_bot_conversation(daemon, peers)
    peers.ccsp.script = [("slow", 0.3)]
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202

    async def on_the_wire() -> bool:
        return peers.ccsp.attempts == 1

    await daemon.until(on_the_wire)
    await wait_due(daemon, clock, 30)
    abandoned = (await daemon.conversation(cid))["ccsp_conversation_id"]
    clock.advance(30)  # the deadline passes while the CCSP is still answering
    failed = (await bot_bodies(peers, 2))[1]
    assert list(failed) == [
        "Event",
        "Conversationid",
        "ConversationType",
        "CCSPConversationid",
        "Reason",
        "Unanswered",
        "Channel",
        "Timestamp",
    ]
    assert (failed["Event"], failed["Reason"], failed["Unanswered"]) == (
        "Handover Failed",
        "no 2xx answer to the Handover within 30s",
        [],
    )
    # Its late 2xx gets the session closed at once; the Handover stays a dead letter.
    handover, close = await peers.ccsp.wait_for(2)
    assert handover["Conversationid"] == abandoned
    assert close == {"Event": "Close", "Conversationid": abandoned}
    _, dead = await daemon.until_dead_letters(1)
    assert [(d["body"]["Event"], d["reason"]) for d in dead["dead_letters"]] == [
        ("Handover", "session_abandoned")
    ]
    assert (await daemon.conversation(cid))["route"] == "bot"


async def test_an_operator_close_before_the_handover_is_answered_withdraws_it(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS)
    cid = await open_bot_conversation(daemon, peers)
    peers.ccsp.script = [500]
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    await wait_due(daemon, clock, 60)
    status, _ = await daemon.admin("POST", f"/v1/admin/conversations/{cid}/close-session")
    assert status == 202
    notice = (await bot_bodies(peers, 2))[1]
    assert (notice["Event"], notice["Reason"]) == ("Agent Session Closed", "operator")
    _, dead = await daemon.until_dead_letters(1)
    [letter] = dead["dead_letters"]
    assert (letter["body"]["Event"], letter["reason"]) == ("Handover", "session_abandoned")
    status, body = await daemon.admin(
        "POST", f"/v1/admin/dead-letters/{letter['delivery_id']}/replay"
    )
    assert (status, body["error"]) == (409, "session_abandoned")
    # Neither its retry nor a Close reaches the CCSP: the next handover is its next attempt.
    clock.advance(60)
    await route_is(daemon, cid, "bot")
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [second] = await peers.ccsp.wait_for(1)
    assert second["Event"] == "Handover"
    assert peers.ccsp.attempts == 2
