"""A bot follows its own replies: Messageids, custom parameters, delivery reports as
documented, a refused reply reported instead of dropped, and parked deliveries that expire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.http.inbound import ChannelInput
from tests.clock import ManualClock
from tests.conftest import ASSET_TOKEN, Daemon, Peers, StartRouter, base_config, execute

EVENTS = "/v1/channels/fb-page-1/events"
DELAYS = [60, 300, 900, 2340]


async def open_bot_conversation(daemon: Daemon, peers: Peers) -> str:
    """A conversation whose first message is delivered and settled on disk."""
    await daemon.customer("hi", "m1")
    [first] = await peers.bot.wait_for(1)
    cid = str(first["Conversationid"])

    async def settled() -> bool:
        return (await daemon.conversation(cid))["deliveries"] == []

    await daemon.until(settled)
    return cid


async def fence(tmp_path: Path, table: str) -> None:
    """Make the next write to `table` fail: the daemon stops routing until restarted."""
    await execute(
        tmp_path / "router.db",
        f"CREATE TRIGGER no_{table} BEFORE INSERT ON {table} "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END",
    )


async def unfence(tmp_path: Path, table: str) -> None:
    await execute(tmp_path / "router.db", f"DROP TRIGGER no_{table}")


async def degraded(daemon: Daemon) -> bool:
    return (await daemon.get_debug("/healthz"))[0] == 503


async def report(
    daemon: Daemon, message_id: str, status: str, user: str = "u1", **extra: Any
) -> tuple[int, Any]:
    body = {
        "Event": "Message Delivery",
        "Userid": user,
        "Messageid": message_id,
        "DeliveryStatus": status,
        **extra,
    }
    return await daemon.post(EVENTS, body, ASSET_TOKEN)


async def test_a_reply_with_custom_parameters_and_its_delivery_report(
    daemon: Daemon, peers: Peers
) -> None:
    cid = await open_bot_conversation(daemon, peers)
    status, answer = await daemon.bot(
        {
            "eventid": "1001",
            "conversation_id": cid,
            "message": "Your order shipped",
            "Messagetype": "text",
            "customparam1": "order-7",
            "customparam2": {"carrier": "UPS"},
            "customparam3": [1, 2],
        }
    )
    assert status == 202
    message_id = answer["Messageid"]
    assert answer == {"accepted": True, "Messageid": message_id} and message_id
    [out] = await peers.channel.wait_for(1)
    assert out == {
        "Userid": "u1",
        "Message": "Your order shipped",
        "MessageType": "text",
        "Media": "",
        "Messageid": message_id,
        "Channel": "FB",
        "Timestamp": out["Timestamp"],
        "customparam1": "order-7",
        "customparam2": {"carrier": "UPS"},
        "customparam3": [1, 2],
    }
    assert (await report(daemon, message_id, "DELIVERED", Description="ignored"))[0] == 202
    assert (await report(daemon, message_id, "failed", Description="blocked"))[0] == 202
    delivered, failed = (await peers.bot.wait_for(3))[1:]
    assert delivered == {
        "Conversationid": cid,
        "ConversationType": "BOT",
        "Messageid": message_id,
        "DeliveryStatus": "Delivered",
        "Channel": "FB",
        "Event": "Message Delivery",
        "Timestamp": delivered["Timestamp"],
    }
    assert (failed["DeliveryStatus"], failed["Description"]) == ("Failed", "blocked")


async def test_the_bots_own_messageid_is_kept(daemon: Daemon, peers: Peers) -> None:
    cid = await open_bot_conversation(daemon, peers)
    reply = {"eventid": "1001", "conversation_id": cid, "message": "x", "MessageId": "bot-42"}
    assert await daemon.bot(reply) == (202, {"accepted": True, "Messageid": "bot-42"})
    [out] = await peers.channel.wait_for(1)
    assert out["Messageid"] == "bot-42"
    assert "MessageId" not in out


async def test_delivery_statuses_are_checked_normalised_and_deduplicated(
    daemon: Daemon, peers: Peers
) -> None:
    await open_bot_conversation(daemon, peers)
    status, body = await report(daemon, "out-1", "Seen")
    assert (status, body["error"]) == (400, "invalid_delivery_status")
    assert "Sent, Delivered, Failed, Read" in body["message"]
    assert await report(daemon, "out-1", "sent") == (202, {"accepted": True})
    assert await report(daemon, "out-1", "SENT") == (200, {"accepted": True, "duplicate": True})
    assert await report(daemon, "out-1", "Read") == (202, {"accepted": True})
    sent, read = (await peers.bot.wait_for(3))[1:]
    assert (sent["DeliveryStatus"], read["DeliveryStatus"]) == ("Sent", "Read")
    assert "Description" not in sent


async def test_a_report_for_a_closed_conversation_reaches_its_bot_under_the_closed_id(
    daemon: Daemon, peers: Peers
) -> None:
    cid = await open_bot_conversation(daemon, peers)
    _, answer = await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "bye"})
    await peers.channel.wait_for(1)
    assert (await daemon.bot({"Event": "Close", "conversation_id": cid}))[0] == 202

    async def closed() -> bool:
        return (await daemon.conversation(cid))["status"] == "closed"

    await daemon.until(closed)
    assert (await report(daemon, answer["Messageid"], "Read"))[0] == 202
    [_, got] = await peers.bot.wait_for(2)
    assert (got["Event"], got["Conversationid"], got["Messageid"]) == (
        "Message Delivery",
        cid,
        answer["Messageid"],
    )
    _, page = await daemon.get_debug("/debug/conversations")
    assert [c["conversation_id"] for c in page["conversations"]] == [cid]


async def test_absent_fields_go_out_as_empty_strings(daemon: Daemon, peers: Peers) -> None:
    await daemon.post(
        EVENTS,
        {"Event": "Incoming message", "Userid": "u1", "Message": "no media", "Messageid": "m1"},
        ASSET_TOKEN,
    )
    await daemon.customer("null media", "m2", Media=None)
    await daemon.customer("", "m3", Media={"url": "http://x/y.png"})
    bodies = await peers.bot.wait_for(3)
    assert [b["Media"] for b in bodies] == ["", "", {"url": "http://x/y.png"}]
    assert None not in bodies[0].values()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {
                "Event": "Incoming message",
                "Userid": "u1",
                "user_id": "u2",
                "Message": "x",
                "Messageid": "1",
            },
            "Userid",
        ),
        (
            {
                "Event": "Incoming message",
                "Userid": "u1",
                "Message": "a",
                "message": "b",
                "Messageid": "1",
            },
            "Message",
        ),
    ],
)
async def test_a_field_given_twice_under_folding_spellings_is_400(
    daemon: Daemon, body: dict[str, Any], field: str
) -> None:
    status, answer = await daemon.post(EVENTS, body, ASSET_TOKEN)
    assert (status, answer["error"]) == (400, "duplicate_field")
    assert answer["message"].startswith(f"{field} is given more than once")


async def test_a_bot_field_given_twice_is_400(daemon: Daemon, peers: Peers) -> None:
    cid = await open_bot_conversation(daemon, peers)
    status, answer = await daemon.bot(
        {"eventid": "1001", "conversation_id": cid, "ConversationId": "other", "message": "x"}
    )
    assert (status, answer["error"]) == (400, "duplicate_field")
    assert "conversation_id" in answer["message"]


def test_dedupe_keys_cannot_collide() -> None:
    def key(event: str, message_id: str, status: str | None = None) -> str:
        fields = {"DeliveryStatus": status} if status else {}
        return ChannelInput(event, "u", message_id, fields).dedupe_key

    keys = [
        key("Incoming message", "a|b"),
        key("Incoming message", "a"),
        key("Incoming message", "b|a"),
        key("Message Delivery", "a|Read", "Sent"),
        key("Message Delivery", "a", "Read"),
        key("Message Delivery", "a|Read|Sent", "Read"),
    ]
    assert len(set(keys)) == len(keys)


async def test_messageids_with_separators_stay_distinct(daemon: Daemon, peers: Peers) -> None:
    for message_id in ("a|b", "a", "b|a", "a|b|"):
        assert (await daemon.customer(message_id, message_id))[0] == 202
    bodies = await peers.bot.wait_for(4)
    assert [b["Messageid"] for b in bodies] == ["a|b", "a", "b|a", "a|b|"]


async def test_a_reply_refused_when_processed_is_reported_failed_to_the_bot(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    first = await start_router()
    cid = await open_bot_conversation(first, peers)
    # Nothing routed after this commits, so the handover and the reply both wait in the
    # store, each accepted while the bot still held the conversation.
    await fence(tmp_path, "ccsp_sessions")
    assert (await first.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202

    await first.until(lambda: degraded(first))
    status, answer = await first.bot({"eventid": "1001", "conversation_id": cid, "message": "x"})
    assert status == 202
    await first.router.stop()
    await unfence(tmp_path, "ccsp_sessions")
    await start_router()
    [handover] = await peers.ccsp.wait_for(1)
    assert handover["Event"] == "Handover"
    refused = next(b for b in await peers.bot.wait_for(2) if b.get("Event") == "Message Delivery")
    assert refused == {
        "Conversationid": cid,
        "ConversationType": "CCSP",
        "Messageid": answer["Messageid"],
        "DeliveryStatus": "Failed",
        "Description": "conversation_with_agent",
        "Channel": "FB",
        "Event": "Message Delivery",
        "Timestamp": refused["Timestamp"],
    }
    assert peers.channel.received == []


async def test_a_restart_between_the_202_and_the_delivery_keeps_the_messageid(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    first = await start_router()
    cid = await open_bot_conversation(first, peers)
    await fence(tmp_path, "deliveries")
    # A null Messageid under another spelling is replaced, not kept beside the generated one.
    status, answer = await first.bot(
        {"eventid": "1001", "conversation_id": cid, "message": "x", "message_id": None}
    )
    assert status == 202

    await first.until(lambda: degraded(first))
    await first.router.stop()
    assert peers.channel.received == []
    await unfence(tmp_path, "deliveries")
    await start_router()
    [out] = await peers.channel.wait_for(1)
    assert out["Messageid"] == answer["Messageid"]


async def test_a_delivery_parked_too_long_expires_when_the_bot_is_reactivated(
    start_router: StartRouter, peers: Peers
) -> None:
    clock = ManualClock()
    daemon = await start_router(
        clock=clock, retry_delays_s=DELAYS, inactive_after_failures=1, max_parked_age_s=100
    )
    peers.bot.script = [500]
    await daemon.customer("old", "m1")

    async def parked(count: int) -> bool:
        _, items = await daemon.get_debug("/debug/integrations")
        return bool(items[0]["parked"] == count)

    await daemon.until(lambda: parked(1))
    clock.advance(60)
    await daemon.customer("newer", "m2")
    await daemon.until(lambda: parked(2))
    clock.advance(60)  # m1 parked 120 s ago, m2 60 s ago
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert (status, body["state"]) == (200, "active")
    [got] = await peers.bot.wait_for(1)
    assert got["Messageid"] == "m2"
    _, dead = await daemon.until_dead_letters(1)
    [letter] = dead["dead_letters"]
    assert (letter["reason"], letter["body"]["Messageid"]) == ("expired", "m1")
    status, _ = await daemon.admin("POST", f"/v1/admin/dead-letters/{letter['delivery_id']}/replay")
    assert status == 202
    [_, replayed] = await peers.bot.wait_for(2)
    assert replayed["Messageid"] == "m1"


async def test_a_report_that_finds_no_conversation_opens_none(daemon: Daemon, peers: Peers) -> None:
    cid = await open_bot_conversation(daemon, peers)
    assert (await daemon.bot({"Event": "Close", "conversation_id": cid}))[0] == 202

    async def closed() -> bool:
        return (await daemon.conversation(cid))["status"] == "closed"

    await daemon.until(closed)
    with capture_logs() as logs:
        assert (await report(daemon, "never-sent", "Read"))[0] == 202

        async def unrouted() -> bool:
            return any(e["event"] == "channel_event_unrouted" for e in logs)

        await daemon.until(unrouted)
    _, page = await daemon.get_debug("/debug/conversations")
    assert [c["conversation_id"] for c in page["conversations"]] == [cid]
    # A customer message still opens a new conversation as before.
    await daemon.customer("back again", "m2")
    [_, again] = await peers.bot.wait_for(2)
    assert again["Conversationid"] != cid


async def test_reports_for_a_reused_bot_messageid_reach_each_users_conversation(
    daemon: Daemon, peers: Peers
) -> None:
    conversations = {}
    for user in ("ann", "ben"):
        await daemon.customer("hi", f"{user}-1", user=user)
        first = next(
            b
            for b in await peers.bot.wait_for(len(conversations) + 1)
            if b["Messageid"] == f"{user}-1"
        )
        conversations[user] = first["Conversationid"]
        reply = {
            "eventid": "1001",
            "conversation_id": first["Conversationid"],
            "message": "ok",
            "Messageid": "1",
        }
        assert (await daemon.bot(reply))[0] == 202
    await peers.channel.wait_for(2)
    for user in ("ann", "ben"):
        assert await report(daemon, "1", "Delivered", user=user) == (202, {"accepted": True})
    reports = [b for b in await peers.bot.wait_for(4) if b.get("Event") == "Message Delivery"]
    assert sorted(b["Conversationid"] for b in reports) == sorted(conversations.values())


async def test_a_parked_delivery_of_a_retired_conversation_expires_too(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    config = base_config(
        peers,
        tmp_path / "router.db",
        retry_delays_s=DELAYS,
        inactive_after_failures=1,
        max_parked_age_s=100,
    )
    config["conversations"] = {"max_live": 1}
    daemon = await start_router(config, clock=clock)
    peers.bot.script = [500]
    for user in ("ann", "ben", "cal"):
        await daemon.customer("old", f"{user}-1", user=user)

    async def all_parked() -> bool:
        _, items = await daemon.get_debug("/debug/integrations")
        return bool(items[0]["parked"] + len(peers.bot.received) == 3)

    await daemon.until(all_parked)
    delivered = len(peers.bot.received)  # an attempt that left before the first failure
    clock.advance(500)
    status, _ = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert status == 200
    _, dead = await daemon.until_dead_letters(3 - delivered)
    assert {d["reason"] for d in dead["dead_letters"]} == {"expired"}
    assert len(peers.bot.received) == delivered
