"""Bot+CCSP: handover, agent sessions with fresh IDs, copies to the bot, and back."""

from __future__ import annotations

from typing import Any

from router.domain.state import TRANSCRIPT_LENGTH, TRANSCRIPT_PRUNE_EVERY
from tests.conftest import Daemon, Peers, execute


async def start_and_hand_over(daemon: Daemon, peers: Peers) -> tuple[str, dict[str, Any]]:
    await daemon.customer("I need a human", "m1")
    [first] = await peers.bot.wait_for(1)
    bot_id = first["Conversationid"]
    await daemon.bot({"eventid": "1001", "conversation_id": bot_id, "message": "One moment"})
    await peers.channel.wait_for(1)
    status, _ = await daemon.bot(
        {
            "eventid": "1002",
            "conversation_id": bot_id,
            "Timestamp": "2026-11-23 10:00:00.00",
            "queue": "billing",
        }
    )
    assert status == 202
    [handover] = await peers.ccsp.wait_for(1)
    return bot_id, handover


async def test_first_message_goes_to_the_bot_and_handover_opens_a_ccsp_conversation(
    daemon: Daemon, peers: Peers
) -> None:
    bot_id, handover = await start_and_hand_over(daemon, peers)
    assert handover["Event"] == "Handover"
    assert handover["ConversationType"] == "CCSP"
    assert handover["BotConversationid"] == bot_id
    assert handover["Conversationid"] != bot_id
    assert handover["Channel"] == "FB"
    assert handover["Userid"] == "u1"
    assert handover["queue"] == "billing"
    assert [(t["From"], t["Message"]) for t in handover["Transcript"]] == [
        ("customer", "I need a human"),
        ("bot", "One moment"),
    ]
    assert peers.ccsp.received[0].headers["Authorization"] == "Bearer ccsp-secret"
    conversation = await daemon.conversation(bot_id)
    assert conversation["route"] == "ccsp"
    assert conversation["ccsp_conversation_id"] == handover["Conversationid"]


async def test_after_handover_customer_messages_go_to_the_ccsp_with_a_copy_to_the_bot(
    daemon: Daemon, peers: Peers
) -> None:
    bot_id, handover = await start_and_hand_over(daemon, peers)
    ccsp_id = handover["Conversationid"]
    await daemon.customer("my bill is wrong", "m2")
    _, to_agent = await peers.ccsp.wait_for(2)
    assert to_agent["Conversationid"] == ccsp_id
    assert to_agent["ConversationType"] == "CCSP"
    assert to_agent["Message"] == "my bill is wrong"
    _, copy = await peers.bot.wait_for(2)
    assert copy["Conversationid"] == bot_id
    assert copy["ConversationType"] == "CCSP"
    assert copy["Message"] == "my bill is wrong"


async def test_agent_messages_reach_the_customer_and_a_copy_reaches_the_bot(
    daemon: Daemon, peers: Peers
) -> None:
    bot_id, handover = await start_and_hand_over(daemon, peers)
    status, body = await daemon.agent(
        {
            "Event": "Agent message",
            "Conversationid": handover["Conversationid"],
            "Message": "Hi, I am Ana",
            "MessageType": "text",
            "Media": None,
        }
    )
    assert (status, body) == (202, {"accepted": True})
    _, to_customer = await peers.channel.wait_for(2)
    assert (to_customer["Userid"], to_customer["Message"]) == ("u1", "Hi, I am Ana")
    _, copy = await peers.bot.wait_for(2)
    assert copy["Event"] == "Agent message"
    assert copy["ConversationType"] == "CCSP"
    assert copy["Conversationid"] == bot_id
    assert copy["Message"] == "Hi, I am Ana"


async def test_bot_may_not_answer_while_an_agent_holds_the_conversation(
    daemon: Daemon, peers: Peers
) -> None:
    bot_id, _ = await start_and_hand_over(daemon, peers)
    status, body = await daemon.bot(
        {"eventid": "1001", "conversation_id": bot_id, "message": "me too"}
    )
    assert status == 409
    assert body["error"] == "conversation_with_agent"


async def test_agent_close_returns_to_the_bot_and_the_next_handover_gets_a_new_id(
    daemon: Daemon, peers: Peers
) -> None:
    bot_id, handover = await start_and_hand_over(daemon, peers)
    first_ccsp = handover["Conversationid"]
    status, _ = await daemon.agent({"Event": "Close", "Conversationid": first_ccsp})
    assert status == 202

    async def back_to_bot() -> bool:
        return (await daemon.conversation(bot_id))["route"] == "bot"

    await daemon.until(back_to_bot)
    status, body = await daemon.agent(
        {"Event": "Agent message", "Conversationid": first_ccsp, "Message": "still there?"}
    )
    assert (status, body["error"]) == (409, "conversation_closed")
    await daemon.customer("thanks, one more thing", "m3")
    _, again = await peers.bot.wait_for(2)
    assert again["Conversationid"] == bot_id
    assert again["ConversationType"] == "BOT"
    assert len(peers.ccsp.received) == 1
    await daemon.bot({"eventid": "1002", "conversation_id": bot_id})
    _, second = await peers.ccsp.wait_for(2)
    assert second["Event"] == "Handover"
    assert second["Conversationid"] not in (first_ccsp, bot_id)
    assert second["BotConversationid"] == bot_id


async def test_bot_events_invoke_flows_by_rule(daemon: Daemon, peers: Peers) -> None:
    await daemon.customer("hello", "m1")
    [first] = await peers.bot.wait_for(1)
    bot_id = first["Conversationid"]
    status, _ = await daemon.bot(
        {"Event": "Milestone Reached", "conversation_id": bot_id, "milestone": "address-collected"}
    )
    assert status == 202
    [milestone] = await peers.flow.wait_for(1)
    assert milestone["Event"] == "Milestone Reached"
    assert milestone["Conversationid"] == bot_id
    assert milestone["milestone"] == "address-collected"
    # Notify has no rule: accepted, nothing invoked.
    status, _ = await daemon.bot({"Event": "Notify", "conversation_id": bot_id})
    assert status == 202
    await daemon.bot({"eventid": "1002", "conversation_id": bot_id, "reason": "asked"})
    _, on_handover = await peers.flow.wait_for(2)
    assert on_handover["Event"] == "Handover"
    assert on_handover["Conversationid"] == bot_id
    assert on_handover["reason"] == "asked"


async def test_handover_on_a_bot_only_rule_without_a_handover_rule_is_409(
    daemon: Daemon, peers: Peers
) -> None:
    await daemon.customer("hi", "s1", asset="sms-1")
    [first] = await peers.bot.wait_for(1)
    cid = first["Conversationid"]
    before = {k: v for k, v in (await daemon.conversation(cid)).items() if k != "deliveries"}
    for body in (
        {"eventid": "1002", "conversation_id": cid},
        {"Event": "Handover", "conversation_id": cid},
    ):
        status, answer = await daemon.bot(body)
        assert (status, answer["error"]) == (409, "no_ccsp")
    after = await daemon.conversation(cid)
    assert {k: v for k, v in after.items() if k != "deliveries"} == before
    await daemon.customer("hello?", "s2", asset="sms-1")
    _, second = await peers.bot.wait_for(2)
    assert second["ConversationType"] == "BOT"
    assert peers.ccsp.received == []
    assert peers.flow.received == []


async def test_the_handover_carries_the_last_twenty_messages_read_from_the_store(
    daemon: Daemon, peers: Peers
) -> None:
    for n in range(1, 24):
        status, _ = await daemon.customer(f"message {n}", f"m{n}")
        assert status == 202
    bodies = await peers.bot.wait_for(23)
    bot_id = bodies[0]["Conversationid"]
    status, _ = await daemon.bot({"eventid": "1002", "conversation_id": bot_id})
    assert status == 202
    await daemon.customer("right after the handover", "m24")  # waits behind the read
    [handover, after] = await peers.ccsp.wait_for(2)
    said = [t["Message"] for t in handover["Transcript"]]
    assert said == [f"message {n}" for n in range(4, 24)]
    assert after["Message"] == "right after the handover"
    conversation = await daemon.conversation(bot_id)
    assert [t["Message"] for t in conversation["transcript"]] == [
        *(f"message {n}" for n in range(5, 24)),
        "right after the handover",
    ]


async def test_a_transcript_on_disk_is_pruned_every_few_messages_and_read_to_its_last_twenty(
    daemon: Daemon, peers: Peers
) -> None:
    """Older messages go with the first message after the conversation started and every
    TRANSCRIPT_PRUNE_EVERY-th after it, not with each: the rows stay bounded."""
    sent = 2 * TRANSCRIPT_LENGTH
    for n in range(1, sent + 1):
        status, _ = await daemon.customer(f"message {n}", f"m{n}")
        assert status == 202
    bodies = await peers.bot.wait_for(sent)
    cid = bodies[0]["Conversationid"]
    [(rows,)] = await execute(
        daemon.router.store.path, f"SELECT count(*) FROM transcript WHERE conversation_id = '{cid}'"
    )
    # Pruned with messages 1, 9, 17, 25 and 33 of 40: the last 20 then, and seven since.
    assert rows == TRANSCRIPT_LENGTH + (sent - 1) % TRANSCRIPT_PRUNE_EVERY
    assert rows < TRANSCRIPT_LENGTH + TRANSCRIPT_PRUNE_EVERY
    conversation = await daemon.conversation(cid)
    assert [t["Message"] for t in conversation["transcript"]] == [
        f"message {n}" for n in range(sent - TRANSCRIPT_LENGTH + 1, sent + 1)
    ]
