"""The debug port's live views of the actors, and the operator's actions on a conversation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter

DELAYS = [60, 300, 900, 2340]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def first_conversation(daemon: Daemon, **query: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def listed() -> bool:
        nonlocal found
        args = "&".join(f"{k}={v}" for k, v in query.items())
        _, page = await daemon.get_debug(f"/debug/conversations?{args}")
        found = page["conversations"][0] if page["conversations"] else {}
        return bool(found)

    await daemon.until(listed)
    return found


async def delivered(peers: Peers, daemon: Daemon, count: int, peer: str = "bot") -> None:
    async def enough() -> bool:
        return len(getattr(peers, peer).received) >= count

    await daemon.until(enough)


async def runtime(daemon: Daemon) -> dict[str, Any]:
    status, view = await daemon.get_debug("/debug/runtime")
    assert status == 200
    return dict(view)


async def test_the_runtime_view_counts_resident_and_passivated_conversations_and_messages(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router()
    for n in range(3):
        await daemon.customer("hi", f"m{n}", user=f"u{n}")
    await delivered(peers, daemon, 3)

    async def settled() -> bool:
        view = await runtime(daemon)
        return view["conversations"]["resident"] == 3 and view["mailboxes"]["waiting"] == 0

    await daemon.until(settled)
    view = await runtime(daemon)
    assert view["conversations"]["passivated"] == 0
    assert view["actors"]["directory"] == 1
    assert view["actors"]["endpoints"] >= 4  # a bot, a CCSP, a flow, the channels
    assert view["messages"]["handled"] >= 6  # each message: the directory, then its conversation
    assert view["restarts"] == 0
    assert set(view["mailboxes"]) == {"waiting", "deepest", "actors_with_mail", "by_kind"}

    cid = (await first_conversation(daemon, user="u1"))["conversation_id"]
    status, answer = await daemon.admin("POST", f"/v1/admin/conversations/{cid}/passivate")
    assert (status, answer) == (200, {"Conversationid": cid, "passivated": True})

    async def passivated() -> bool:
        view = (await runtime(daemon))["conversations"]
        return (view["resident"], view["passivated"]) == (2, 1)

    await daemon.until(passivated)


async def test_a_resident_conversation_shows_its_lanes_timers_mailbox_and_recent_events(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS)
    peers.bot.script = [500]
    await daemon.customer("hello", "m1")

    async def retrying() -> bool:
        return clock.pending() == [60.0]

    await daemon.until(retrying)
    cid = (await first_conversation(daemon))["conversation_id"]
    view = await daemon.conversation(cid)
    live = view["live"]
    assert live["state"] == "running" and live["mailbox"] == 0 and live["stashed"] == 0
    [lane] = [lane for lane in live["lanes"] if lane["destination"] == "bot:support-bot"]
    [pending] = lane["pending"]
    assert (pending["status"], pending["attempt"], pending["last_error"]) == (
        "retrying",
        1,
        "HTTP 500",
    )
    assert live["timers"] == [
        {"timer": "retry", "destination": "bot:support-bot", "at": pending["next_attempt_at"]}
    ]
    events = [e["event"] for e in live["recent_events"]]
    assert events[-1] == "CustomerEvent"  # newest first: the outcome came after the message
    assert live["recent_events"][-1]["name"] == "Incoming message"
    assert any(e["event"] == "DeliveryOutcome" and e["ok"] is False for e in live["recent_events"])
    assert view["agent_sessions"] == []


async def test_agent_sessions_are_listed_with_their_history(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router()
    await daemon.customer("hi", "m1")
    await delivered(peers, daemon, 1)
    cid = peers.bot.bodies[0]["Conversationid"]
    assert (await daemon.bot({"Event": "Handover", "conversation_id": cid}))[0] == 202
    await delivered(peers, daemon, 1, "ccsp")
    ccid = peers.ccsp.bodies[0]["Conversationid"]
    assert (await daemon.agent({"Event": "Close", "Conversationid": ccid}))[0] == 202

    async def closed() -> bool:
        sessions = (await daemon.conversation(cid))["agent_sessions"]
        return [s["status"] for s in sessions] == ["closed"]

    await daemon.until(closed)
    [session] = (await daemon.conversation(cid))["agent_sessions"]
    assert (session["ccsp_conversation_id"], session["ccsp"]) == (ccid, "agents")
    assert session["updated_at"].endswith("+00:00")


async def test_conversations_are_filtered_by_user_status_route_and_integration(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router()
    await daemon.customer("hi", "m1", user="alice")
    await daemon.customer("hi", "m2", user="bob")
    await daemon.customer("hi", "m3", user="carol", asset="wa-1")  # a flow conversation
    await delivered(peers, daemon, 2)
    bob = (await first_conversation(daemon, user="bob"))["conversation_id"]
    assert (await daemon.bot({"Event": "Handover", "conversation_id": bob}))[0] == 202

    async def users(**query: str) -> list[str]:
        args = "&".join(f"{k}={v}" for k, v in query.items())
        status, page = await daemon.get_debug(f"/debug/conversations?{args}")
        assert status == 200, page
        return sorted(c["user"] for c in page["conversations"])

    async def handed_over() -> bool:
        return await users(route="ccsp") == ["bob"]

    await daemon.until(handed_over)
    assert await users(user="alice") == ["alice"]
    assert await users(route="flow") == ["carol"]
    assert await users(integration="support-bot") == ["alice", "bob"]
    assert await users(status="open", route="bot") == ["alice"]
    assert await users(status="closed") == []
    status, page = await daemon.get_debug("/debug/conversations?limit=1&integration=support-bot")
    assert len(page["conversations"]) == 1 and page["next_cursor"] is not None
    status, page = await daemon.get_debug(
        f"/debug/conversations?limit=1&integration=support-bot&cursor={page['next_cursor']}"
    )
    assert len(page["conversations"]) == 1 and page["next_cursor"] is None
    for bad in ("status=gone", "route=phone"):
        status, answer = await daemon.get_debug(f"/debug/conversations?{bad}")
        assert status == 400 and answer["error"] == "invalid_request", answer


async def test_an_integration_shows_attempts_errors_dead_letters_and_its_conversations(
    start_router: StartRouter, peers: Peers
) -> None:
    # Retries 50 ms apart: five failed attempts make a dead letter, short of inactive.
    daemon = await start_router(inactive_after_failures=10)
    peers.bot.script = [500] * 5
    await daemon.customer("hi", "m1")
    await daemon.until_dead_letters(1)
    cid = (await first_conversation(daemon))["conversation_id"]
    _, [bot] = await daemon.get_debug("/debug/integrations?state=active")
    assert (bot["id"], bot["in_flight"], bot["last_error"]) == ("support-bot", 0, "HTTP 500")
    assert (bot["dead_letters"], bot["last_dead_letter_error"]) == (1, "HTTP 500")
    assert (bot["resident_conversations"], bot["resident_sample"]) == (1, [cid])
    assert (bot["consecutive_failures"], bot["parked"]) == (5, 0)
    status, found = await daemon.get_debug("/debug/integrations?state=inactive")
    assert (status, found) == (200, [])
    status, answer = await daemon.get_debug("/debug/integrations?state=asleep")
    assert (status, answer["error"]) == (400, "invalid_request")


async def test_passivating_a_conversation_with_an_attempt_out_waits_for_its_answer(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router()
    peers.bot.script = [("slow", 0.5)]
    await daemon.customer("hi", "m1")
    cid = (await first_conversation(daemon))["conversation_id"]

    async def attempt_out() -> bool:
        live = (await daemon.conversation(cid))["live"]
        return live is not None and live["lanes"] and live["lanes"][0]["phase"] == "in_flight"

    await daemon.until(attempt_out)
    status, answer = await daemon.admin("POST", f"/v1/admin/conversations/{cid}/passivate")
    assert (status, answer) == (202, {"Conversationid": cid, "passivated": False})

    async def gone() -> bool:
        return (await daemon.conversation(cid))["live"] is None

    await daemon.until(gone)
    # It comes back on its next event, the same conversation.
    await daemon.customer("again", "m2")
    await delivered(peers, daemon, 2)
    assert [b["Conversationid"] for b in peers.bot.bodies] == [cid, cid]
    assert (await daemon.conversation(cid))["live"] is not None


async def test_operator_actions_need_the_admin_token_and_a_known_conversation(
    daemon: Daemon,
) -> None:
    for action in ("passivate", "close"):
        status, answer = await daemon.admin("POST", f"/v1/admin/conversations/nope/{action}")
        assert (status, answer["error"]) == (404, "unknown_conversation")
        status, _ = await daemon.admin(
            "POST", f"/v1/admin/conversations/nope/{action}", token="wrong"
        )
        assert status == 401


async def test_closing_a_conversation_as_its_bot_would(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router()
    await daemon.customer("hi", "m1")
    await delivered(peers, daemon, 1)
    cid = peers.bot.bodies[0]["Conversationid"]
    status, answer = await daemon.admin("POST", f"/v1/admin/conversations/{cid}/close")
    assert (status, answer) == (202, {"accepted": True, "Conversationid": cid})

    async def closed() -> bool:
        return (await daemon.conversation(cid))["status"] == "closed"

    await daemon.until(closed)
    status, answer = await daemon.admin("POST", f"/v1/admin/conversations/{cid}/close")
    assert (status, answer["error"]) == (409, "conversation_closed")
    # The customer's next message opens a new conversation.
    await daemon.customer("hello again", "m2")
    await delivered(peers, daemon, 2)
    assert peers.bot.bodies[1]["Conversationid"] != cid


async def test_closing_is_refused_while_an_agent_holds_it_or_when_no_bot_owns_it(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router()
    await daemon.customer("hi", "m1")
    await daemon.customer("hi", "m2", user="carol", asset="wa-1")
    await delivered(peers, daemon, 1)
    cid = peers.bot.bodies[0]["Conversationid"]
    assert (await daemon.bot({"Event": "Handover", "conversation_id": cid}))[0] == 202

    async def with_agent() -> bool:
        return (await daemon.conversation(cid))["route"] == "ccsp"

    await daemon.until(with_agent)
    status, answer = await daemon.admin("POST", f"/v1/admin/conversations/{cid}/close")
    assert (status, answer["error"]) == (409, "conversation_with_agent")
    flow = (await first_conversation(daemon, route="flow"))["conversation_id"]
    status, answer = await daemon.admin("POST", f"/v1/admin/conversations/{flow}/close")
    assert (status, answer["error"]) == (409, "no_bot")


async def test_the_live_page_is_served_on_the_debug_port(daemon: Daemon) -> None:
    status, text = await daemon.get_debug("/debug/")
    assert status == 200 and "Conversation router" in text
    async with daemon.session.get(daemon.debug + "/debug", allow_redirects=False) as answer:
        assert answer.status == 302 and answer.headers["Location"] == "/debug/"
