"""Webhook delivery: retries on the configured schedule, dead letters, order, parking.

The retry schedule runs on a clock the test drives, with the production delays.
"""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from router.domain.timestamps import iso_timestamp
from tests.clock import ManualClock
from tests.conftest import ADMIN, Daemon, Peers, StartRouter

DELAYS = [60, 300, 900, 2340]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def wait_pending(daemon: Daemon, clock: ManualClock, expected: list[float]) -> None:
    async def due() -> bool:
        return clock.pending() == expected

    await daemon.until(due)


async def pending_deliveries(daemon: Daemon) -> list[dict[str, Any]]:
    _, page = await daemon.get_debug("/debug/conversations")
    found: list[dict[str, Any]] = []
    for item in page["conversations"]:
        found += (await daemon.conversation(item["conversation_id"]))["deliveries"]
    return found


async def integration(daemon: Daemon, name: str = "support-bot") -> dict[str, Any]:
    _, items = await daemon.get_debug("/debug/integrations")
    return next(i for i in items if i["id"] == name)


async def test_failed_delivery_is_retried_after_each_configured_delay(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS)
    peers.bot.script = [500, 502, 503, 500]
    await daemon.customer("hello", "m1")
    start = clock.now()
    await wait_pending(daemon, clock, [60.0])
    [delivery] = await pending_deliveries(daemon)
    assert delivery["attempt"] == 1
    assert delivery["status"] == "retrying"
    assert delivery["last_error"] == "HTTP 500"
    assert delivery["next_attempt_at"] == iso_timestamp(start + 60)
    for waited, following in zip(DELAYS, [*DELAYS[1:], None], strict=True):
        assert clock.advance(waited - 1) == 0
        assert clock.advance(1) == 1
        if following is not None:
            await wait_pending(daemon, clock, [float(following)])
    [got] = await peers.bot.wait_for(1)
    assert got["Message"] == "hello"
    assert peers.bot.attempts == 5

    async def settled() -> bool:
        return await pending_deliveries(daemon) == []

    await daemon.until(settled)


async def test_an_answer_later_than_the_timeout_is_a_failed_attempt(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS, timeout_s=0.2)
    peers.bot.script = [("sleep", 0.6)]
    await daemon.customer("hello", "m1")
    await wait_pending(daemon, clock, [60.0])
    [delivery] = await pending_deliveries(daemon)
    assert delivery["last_error"] == "no answer within 0.2s"
    clock.advance(60)
    [got] = await peers.bot.wait_for(1)
    assert got["Messageid"] == "m1"


async def test_after_the_last_retry_a_delivery_becomes_a_dead_letter_and_can_be_replayed(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS, inactive_after_failures=50)
    peers.bot.script = [500] * 5
    await daemon.customer("doomed", "m1")
    for delay in DELAYS:
        await wait_pending(daemon, clock, [float(delay)])
        clock.advance(delay)
    _, dead = await daemon.until_dead_letters(1)
    [letter] = dead["dead_letters"]
    assert letter["attempt"] == 5
    assert letter["last_error"] == "HTTP 500"
    assert letter["body"]["Message"] == "doomed"
    assert peers.bot.received == []
    # The lane moved on: the next message is delivered.
    await daemon.customer("next", "m2")
    [after] = await peers.bot.wait_for(1)
    assert after["Message"] == "next"
    status, body = await daemon.admin(
        "POST", f"/v1/admin/dead-letters/{letter['delivery_id']}/replay"
    )
    assert (status, body) == (202, {"replayed": letter["delivery_id"]})
    _, replayed = await peers.bot.wait_for(2)
    assert replayed["Message"] == "doomed"
    _, dead = await daemon.get_debug("/debug/dead-letters")
    assert dead["dead_letters"] == []
    status, body = await daemon.admin("POST", "/v1/admin/dead-letters/999999/replay")
    assert (status, body["error"]) == (404, "unknown_dead_letter")


async def test_a_retrying_delivery_holds_back_only_its_own_conversation(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS)
    peers.bot.script = [500]
    await daemon.customer("a1", "a1", user="alice")
    await wait_pending(daemon, clock, [60.0])
    await daemon.customer("a2", "a2", user="alice")
    await daemon.customer("b1", "b1", user="bob")
    [first] = await peers.bot.wait_for(1)
    assert first["Message"] == "b1"
    assert clock.advance(60) == 1
    bodies = await peers.bot.wait_for(3)
    assert [b["Message"] for b in bodies] == ["b1", "a1", "a2"]


async def test_five_consecutive_failures_take_the_bot_out_of_service_until_verified(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS)
    peers.bot.script = [500] * 5
    await daemon.customer("m1", "m1")
    for delay in DELAYS:
        await wait_pending(daemon, clock, [float(delay)])
        clock.advance(delay)

    async def inactive() -> bool:
        return (await integration(daemon))["state"] == "inactive"

    await daemon.until(inactive)
    found = await integration(daemon)
    assert found["consecutive_failures"] == 5
    # The fifth failure used up the last retry, but the fault was the integration's: parked.
    _, dead = await daemon.get_debug("/debug/dead-letters")
    assert dead["dead_letters"] == []
    # New messages are accepted and parked in order; nothing more is attempted.
    for i in (2, 3):
        assert (await daemon.customer(f"m{i}", f"m{i}"))[0] == 202
    assert (await daemon.customer("other", "o1", user="bob"))[0] == 202

    async def parked() -> bool:
        return (await integration(daemon))["parked"] == 4

    await daemon.until(parked)
    assert peers.bot.attempts == 5
    status, admin_view = await daemon.admin("GET", "/v1/admin/integrations/support-bot")
    assert (status, admin_view["state"]) == (200, "inactive")
    # Editing alone does not reactivate.
    status, patched = await daemon.admin(
        "PATCH", "/v1/admin/integrations/support-bot", {"name": "Support bot v2"}
    )
    assert (status, patched["state"], patched["name"]) == (200, "inactive", "Support bot v2")
    # A wrong challenge keeps it out of service.
    peers.bot.verify = "wrong"
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert (status, body["error"]) == (422, "verification_failed")
    assert "challenge" in body["message"]
    peers.bot.verify = 503
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert (status, body["error"]) == (422, "verification_failed")
    assert (await integration(daemon))["state"] == "inactive"
    assert peers.bot.received == []
    # The right challenge brings it back and releases the parked deliveries in order.
    peers.bot.verify = "echo"
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert status == 200
    assert (body["state"], body["consecutive_failures"]) == ("active", 0)
    bodies = await peers.bot.wait_for(4)
    assert [b["Message"] for b in bodies if b["Message"] != "other"] == ["m1", "m2", "m3"]
    assert {b["Message"] for b in bodies} == {"m1", "m2", "m3", "other"}
    assert (await integration(daemon))["parked"] == 0


async def test_failures_count_across_conversations_and_a_success_resets_them(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS)
    peers.bot.script = [500, 500, 500, 500]
    for user in ("a", "b", "c", "d"):
        await daemon.customer("hi", f"{user}1", user=user)

    async def four() -> bool:
        return (await integration(daemon))["consecutive_failures"] == 4

    await daemon.until(four)
    await daemon.customer("hi", "e1", user="e")
    await peers.bot.wait_for(1)

    async def reset() -> bool:
        return (await integration(daemon))["consecutive_failures"] == 0

    await daemon.until(reset)
    assert (await integration(daemon))["state"] == "active"
    peers.bot.script = [500] * 5
    for user in ("f", "g", "h", "i", "j"):
        await daemon.customer("hi", f"{user}1", user=user)

    async def inactive() -> bool:
        return (await integration(daemon))["state"] == "inactive"

    await daemon.until(inactive)


async def test_ccsp_and_channel_failures_never_change_the_bot_state(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS, inactive_after_failures=2)
    peers.channel.script = [500] * 5
    await daemon.customer("hi", "m1")
    [first] = await peers.bot.wait_for(1)
    await daemon.bot(
        {"eventid": "1001", "conversation_id": first["Conversationid"], "message": "hello"}
    )
    for delay in DELAYS:
        await wait_pending(daemon, clock, [float(delay)])
        clock.advance(delay)
    _, dead = await daemon.until_dead_letters(1)
    assert dead["dead_letters"][0]["destination"] == "channel:fb-page-1"
    found = await integration(daemon)
    assert (found["state"], found["consecutive_failures"]) == ("active", 0)


async def test_verify_requires_the_admin_token(daemon: Daemon) -> None:
    status, body = await daemon.admin(
        "POST", "/v1/admin/integrations/support-bot/verify", token="wrong"
    )
    assert (status, body["error"]) == (401, "unauthorized")
    assert ADMIN != "wrong"


async def test_operators_are_told_when_a_bot_goes_out_of_service_and_comes_back(
    start_router: StartRouter, peers: Peers, clock: ManualClock
) -> None:
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS, inactive_after_failures=1)
    peers.bot.script = [500]
    with capture_logs() as logs:
        await daemon.customer("hi", "m1")

        async def inactive() -> bool:
            return (await integration(daemon))["state"] == "inactive"

        await daemon.until(inactive)
        status, _ = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
        assert status == 200
        await peers.bot.wait_for(1)
    events = [(e["event"], e.get("dest"), e["log_level"]) for e in logs]
    assert ("delivery_attempt_failed", "bot:support-bot", "info") in events
    assert ("integration_inactive", "bot:support-bot", "warning") in events
    assert ("integration_reactivated", "bot:support-bot", "info") in events
