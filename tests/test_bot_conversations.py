"""A customer talking to a bot: exact bodies both ways, stable conversation IDs, Close."""

from __future__ import annotations

import re

from tests.conftest import ASSET_TOKEN, Daemon, Peers

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d$")


async def test_incoming_message_reaches_the_bot_exactly_as_documented(
    daemon: Daemon, peers: Peers
) -> None:
    status, body = await daemon.customer("hello", "m1", Media={"url": "http://x/y.png"})
    assert (status, body) == (202, {"accepted": True})
    [got] = await peers.bot.wait_for(1)
    assert list(got) == [
        "Conversationid",
        "ConversationType",
        "Message",
        "MessageType",
        "Messageid",
        "Media",
        "Channel",
        "Event",
        "Timestamp",
    ]
    assert got["ConversationType"] == "BOT"
    assert got["Message"] == "hello"
    assert got["MessageType"] == "text"
    assert got["Messageid"] == "m1"
    assert got["Media"] == {"url": "http://x/y.png"}
    assert got["Channel"] == "FB"
    assert got["Event"] == "Incoming message"
    assert TIMESTAMP.match(got["Timestamp"])
    assert peers.bot.received[0].headers["Authorization"] == "Bearer bot-secret"


async def test_input_keys_match_case_insensitively(daemon: Daemon, peers: Peers) -> None:
    body = {
        "event": "incoming message",
        "USERID": "u9",
        "message": "hi",
        "messagetype": "text",
        "MessageId": "k1",
    }
    status, _ = await daemon.post("/v1/channels/fb-page-1/events", body, ASSET_TOKEN)
    assert status == 202
    [got] = await peers.bot.wait_for(1)
    assert (got["Message"], got["Messageid"]) == ("hi", "k1")
    status, _ = await daemon.bot(
        {
            "EventID": 1001,
            "Conversation_ID": got["Conversationid"],
            "Message": "yo",
            "MessageType": "text",
        }
    )
    assert status == 202
    [out] = await peers.channel.wait_for(1)
    assert (out["Userid"], out["Message"]) == ("u9", "yo")


async def test_postback_and_delivery_events_reach_the_bot(daemon: Daemon, peers: Peers) -> None:
    path = "/v1/channels/fb-page-1/events"
    status, _ = await daemon.post(
        path,
        {"Event": "FB POSTBACK", "Userid": "u1", "PostbackPayload": "BUY", "Messageid": "p1"},
        ASSET_TOKEN,
    )
    assert status == 202
    status, _ = await daemon.post(
        path,
        {
            "Event": "Message Delivery",
            "Userid": "u1",
            "Messageid": "out-1",
            "DeliveryStatus": "delivered",
            "Description": "ok",
        },
        ASSET_TOKEN,
    )
    assert status == 202
    postback, delivery = await peers.bot.wait_for(2)
    assert list(postback) == [
        "Conversationid",
        "ConversationType",
        "PostbackPayload",
        "Messageid",
        "Channel",
        "Event",
        "Timestamp",
    ]
    assert (postback["Event"], postback["PostbackPayload"]) == ("FB POSTBACK", "BUY")
    # Description only "in case of failures"; the status goes on in its documented spelling.
    assert list(delivery) == [
        "Conversationid",
        "ConversationType",
        "Messageid",
        "DeliveryStatus",
        "Channel",
        "Event",
        "Timestamp",
    ]
    assert (delivery["Event"], delivery["DeliveryStatus"]) == ("Message Delivery", "Delivered")
    assert postback["Conversationid"] == delivery["Conversationid"]
    assert TIMESTAMP.match(delivery["Timestamp"])


async def test_bot_reply_reaches_the_customer_exactly_as_documented(
    daemon: Daemon, peers: Peers
) -> None:
    await daemon.customer("hello", "m1")
    [got] = await peers.bot.wait_for(1)
    status, body = await daemon.bot(
        {
            "eventid": "1001",
            "conversation_id": got["Conversationid"],
            "message": "Hi! How can I help?",
            "Messagetype": "text",
            "Timestamp": "2026-01-01 00:00:00.00",
            "orderRef": "A-1",
        }
    )
    assert (status, body) == (202, {"accepted": True, "Messageid": body["Messageid"]})
    [out] = await peers.channel.wait_for(1)
    assert list(out) == [
        "Userid",
        "Message",
        "MessageType",
        "Media",
        "Messageid",
        "Channel",
        "Timestamp",
        "orderRef",
    ]
    assert out["Userid"] == "u1"
    assert out["Message"] == "Hi! How can I help?"
    assert out["Channel"] == "FB"
    assert out["Media"] == ""
    assert out["Messageid"] == body["Messageid"]
    assert out["orderRef"] == "A-1"
    assert TIMESTAMP.match(out["Timestamp"])
    assert peers.channel.received[0].headers["Authorization"] == f"Bearer {ASSET_TOKEN}"


async def test_conversation_id_is_stable_per_asset_user_service_and_bot(
    daemon: Daemon, peers: Peers
) -> None:
    await daemon.customer("one", "m1", user="alice")
    await daemon.customer("two", "m2", user="alice")
    await daemon.customer("three", "m3", user="bob")
    await daemon.customer("four", "m4", user="alice", asset="sms-1")
    bodies = await peers.bot.wait_for(4)
    by_message = {b["Message"]: b["Conversationid"] for b in bodies}
    assert by_message["one"] == by_message["two"]
    assert len({by_message["one"], by_message["three"], by_message["four"]}) == 3
    conversation = await daemon.conversation(by_message["one"])
    assert conversation["asset"] == "fb-page-1"
    assert conversation["user"] == "alice"
    assert conversation["service"] == "support"
    assert conversation["bot"] == "support-bot"
    assert conversation["route"] == "bot"
    assert conversation["status"] == "open"
    assert conversation["ccsp_conversation_id"] is None


async def test_bot_close_ends_the_conversation_and_the_next_message_starts_a_new_one(
    daemon: Daemon, peers: Peers
) -> None:
    await daemon.customer("one", "m1")
    [first] = await peers.bot.wait_for(1)
    old = first["Conversationid"]
    status, _ = await daemon.bot({"Event": "Close", "conversation_id": old})
    assert status == 202

    async def closed() -> bool:
        return (await daemon.conversation(old))["status"] == "closed"

    await daemon.until(closed)
    status, body = await daemon.bot({"eventid": "1001", "conversation_id": old, "message": "late"})
    assert status == 409
    assert body["error"] == "conversation_closed"
    await daemon.customer("again", "m2")
    _, second = await peers.bot.wait_for(2)
    assert second["Conversationid"] != old
    await daemon.customer("and again", "m3")
    *_, third = await peers.bot.wait_for(3)
    assert third["Conversationid"] == second["Conversationid"]


async def test_duplicate_messageid_is_acknowledged_and_not_delivered_twice(
    daemon: Daemon, peers: Peers
) -> None:
    assert await daemon.customer("once", "dup-1") == (202, {"accepted": True})
    assert await daemon.customer("once", "dup-1") == (200, {"accepted": True, "duplicate": True})
    # The same id on another asset is another message.
    assert (await daemon.customer("other", "dup-1", asset="sms-1"))[0] == 202
    await daemon.customer("next", "dup-2")
    bodies = await peers.bot.wait_for(3)
    assert sorted(b["Message"] for b in bodies) == ["next", "once", "other"]


async def test_messages_of_one_conversation_arrive_in_order(daemon: Daemon, peers: Peers) -> None:
    for i in range(30):
        assert (await daemon.customer(f"msg {i}", f"m{i}"))[0] == 202
    bodies = await peers.bot.wait_for(30)
    assert [b["Message"] for b in bodies] == [f"msg {i}" for i in range(30)]


async def test_invoke_flow_rule_sends_channel_events_to_the_flow(
    daemon: Daemon, peers: Peers
) -> None:
    assert (await daemon.customer("order status", "f1", asset="wa-1"))[0] == 202
    [got] = await peers.flow.wait_for(1)
    assert got["Event"] == "Incoming message"
    assert got["Message"] == "order status"
    assert got["Userid"] == "u1"
    assert got["Conversationid"]
    assert TIMESTAMP.match(got["Timestamp"])
    assert peers.bot.received == []
