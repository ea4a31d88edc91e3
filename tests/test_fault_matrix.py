"""The fault matrix: a bot failing in each way a web service can, on a real socket.

For each fault: the first attempt fails with it, the retry waits the first configured delay
(on a clock the test drives), the integration counts one failure and stays active, the
conversation's later message waits behind the failed one, and once the bot answers, both
arrive, in order, and the count is back to 0.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter, base_config
from tests.faulty_bot import FaultyBot

DELAYS = [60, 300, 900, 2340]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def bot() -> AsyncIterator[FaultyBot]:
    found = FaultyBot()
    await found.start()
    yield found
    await found.stop()


def config_with(peers: Peers, store: Path, url: str, timeout_s: float) -> dict[str, Any]:
    raw = base_config(peers, store, retry_delays_s=DELAYS, timeout_s=timeout_s)
    raw["integrations"][0]["url"] = url
    return raw


async def integration(daemon: Daemon) -> dict[str, Any]:
    _, items = await daemon.get_debug("/debug/integrations")
    return next(i for i in items if i["id"] == "support-bot")


async def owed(daemon: Daemon) -> list[dict[str, Any]]:
    _, page = await daemon.get_debug("/debug/conversations")
    [conversation] = page["conversations"]
    return list((await daemon.conversation(conversation["conversation_id"]))["deliveries"])


async def first_attempt_failed(daemon: Daemon, clock: ManualClock) -> dict[str, Any]:
    """Both messages accepted; the first attempt failed and its retry waits 60 s."""
    assert (await daemon.customer("one", "m1"))[0] == 202
    assert (await daemon.customer("two", "m2"))[0] == 202

    async def retrying() -> bool:
        return clock.pending() == [60.0]

    await daemon.until(retrying)
    first, second = await owed(daemon)
    assert (first["status"], first["attempt"]) == ("retrying", 1)
    assert (second["status"], second["attempt"]) == ("pending", 0)  # held back behind it
    found = await integration(daemon)
    assert (found["state"], found["consecutive_failures"]) == ("active", 1)
    return first


async def recovers_in_order(daemon: Daemon, clock: ManualClock, bot: FaultyBot) -> None:
    assert clock.advance(60) == 1

    async def both() -> bool:
        return len(bot.received) == 2

    await daemon.until(both)
    assert [b["Message"] for b in bot.received] == ["one", "two"]

    async def settled() -> bool:
        # The bot has "two" before the router has its answer and removes the delivery.
        found = await integration(daemon)
        return found["consecutive_failures"] == 0 and await owed(daemon) == []

    await daemon.until(settled)


CASES = [
    # fault, the attempt's timeout, what the recorded error says
    ("silent", 0.3, "no answer within 0.3s"),
    ("status:500", 5.0, "HTTP 500"),
    ("status:503", 5.0, "HTTP 503"),
    ("status:400", 5.0, "HTTP 400"),
    ("status:404", 5.0, "HTTP 404"),
    ("reset_mid_body", 5.0, ""),
    ("slow_headers", 0.5, "no answer within 0.5s"),
    ("slow_body", 0.5, "no answer within 0.5s"),
    ("endless_body", 1.0, ""),
    ("redirect", 5.0, "HTTP 302"),
]


@pytest.mark.parametrize(("fault", "timeout_s", "error"), CASES, ids=[c[0] for c in CASES])
async def test_a_fault_is_one_failed_attempt_retried_on_schedule(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    clock: ManualClock,
    bot: FaultyBot,
    fault: str,
    timeout_s: float,
    error: str,
) -> None:
    bot.faults = [fault]
    raw = config_with(peers, tmp_path / "router.db", bot.url, timeout_s)
    daemon = await start_router(config=raw, clock=clock)
    failed = await first_attempt_failed(daemon, clock)
    assert failed["last_error"] and error in failed["last_error"]
    assert "HTTP 2" not in failed["last_error"]
    assert bot.attempts == 1
    await recovers_in_order(daemon, clock, bot)
    assert bot.attempts == 3  # one failed, then each message once: nothing was sent twice


async def test_a_refused_connection_is_a_failed_attempt(
    start_router: StartRouter, peers: Peers, tmp_path: Path, clock: ManualClock
) -> None:
    bot = FaultyBot()
    await bot.start()
    port = bot.port
    await bot.stop()  # nothing listens there now
    raw = config_with(peers, tmp_path / "router.db", f"http://127.0.0.1:{port}/bot", 5.0)
    daemon = await start_router(config=raw, clock=clock)
    failed = await first_attempt_failed(daemon, clock)
    assert "onnect" in failed["last_error"]  # CannotConnect: cannot connect
    await bot.start(port)
    try:
        await recovers_in_order(daemon, clock, bot)
    finally:
        await bot.stop()


async def test_a_name_that_does_not_resolve_is_a_failed_attempt(
    start_router: StartRouter, peers: Peers, tmp_path: Path, clock: ManualClock, bot: FaultyBot
) -> None:
    raw = config_with(peers, tmp_path / "router.db", "http://no-such-host.invalid/bot", 5.0)
    daemon = await start_router(config=raw, clock=clock)
    failed = await first_attempt_failed(daemon, clock)
    assert "no-such-host.invalid" in failed["last_error"] or "onnect" in failed["last_error"]
    # The operator points it at the right host; the retry goes there.
    status, _ = await daemon.admin("PATCH", "/v1/admin/integrations/support-bot", {"url": bot.url})
    assert status == 200
    await recovers_in_order(daemon, clock, bot)


async def test_a_verify_answered_with_invalid_json_keeps_the_bot_out_of_service(
    start_router: StartRouter, peers: Peers, tmp_path: Path, clock: ManualClock, bot: FaultyBot
) -> None:
    raw = config_with(peers, tmp_path / "router.db", bot.url, 5.0)
    raw["delivery"]["inactive_after_failures"] = 1
    bot.faults = ["status:500", "invalid_json"]
    daemon = await start_router(config=raw, clock=clock)
    assert (await daemon.customer("one", "m1"))[0] == 202

    async def inactive() -> bool:
        return (await integration(daemon))["state"] == "inactive"

    await daemon.until(inactive)
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert (status, body["error"]) == (422, "verification_failed")
    assert (await integration(daemon))["state"] == "inactive"
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert (status, body["state"]) == (200, "active")

    async def delivered() -> bool:
        return [b["Message"] for b in bot.received] == ["one"]

    await daemon.until(delivered)


THROTTLES = [
    # what the bot answers, the wait the retry gets, the error recorded
    ("status:429|Retry-After: 120", 120.0, "HTTP 429, retry after 120s"),
    ("status:429|Retry-After: 10", 60.0, "HTTP 429, retry after 10s"),  # the schedule is later
    ("status:429|Retry-After: 7200", 3600.0, "HTTP 429, retry after 7200s"),  # an hour at most
    ("status:429", 60.0, "HTTP 429"),
    ("status:429|Retry-After: soon", 60.0, "HTTP 429"),  # unreadable: the schedule
    ("date", 300.0, "HTTP 429, retry after 300s"),
]


@pytest.mark.parametrize(
    ("fault", "wait", "error"), THROTTLES, ids=[t[2] + f" ({t[1]:g}s)" for t in THROTTLES]
)
async def test_a_429_waits_for_the_later_of_the_schedule_and_retry_after_and_is_not_a_failure(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    clock: ManualClock,
    bot: FaultyBot,
    fault: str,
    wait: float,
    error: str,
) -> None:
    if fault == "date":  # an HTTP date five minutes ahead of the router's clock
        fault = f"status:429|Retry-After: {email.utils.formatdate(clock.now() + 300, usegmt=True)}"
        clock.t = float(int(clock.t))  # HTTP dates have whole seconds
    bot.faults = [fault]
    raw = config_with(peers, tmp_path / "router.db", bot.url, 5.0)
    daemon = await start_router(config=raw, clock=clock)
    assert (await daemon.customer("one", "m1"))[0] == 202
    assert (await daemon.customer("two", "m2"))[0] == 202

    async def retrying() -> bool:
        return clock.pending() == [wait]

    await daemon.until(retrying)
    first, second = await owed(daemon)
    assert (first["status"], first["attempt"], first["last_error"]) == ("retrying", 1, error)
    assert second["status"] == "pending"
    found = await integration(daemon)
    assert (found["state"], found["consecutive_failures"]) == ("active", 0)  # busy, not broken
    assert clock.advance(wait) == 1

    async def both() -> bool:
        return [b["Message"] for b in bot.received] == ["one", "two"]

    await daemon.until(both)


async def test_429s_never_take_a_bot_out_of_service(
    start_router: StartRouter, peers: Peers, tmp_path: Path, clock: ManualClock, bot: FaultyBot
) -> None:
    raw = config_with(peers, tmp_path / "router.db", bot.url, 5.0)
    raw["delivery"]["inactive_after_failures"] = 2
    bot.faults = ["status:429", "status:429", "status:429"]
    daemon = await start_router(config=raw, clock=clock)
    assert (await daemon.customer("one", "m1"))[0] == 202
    for delay in DELAYS[:3]:

        async def waiting(delay: float = delay) -> bool:
            return clock.pending() == [float(delay)]

        await daemon.until(waiting)
        found = await integration(daemon)
        assert (found["state"], found["consecutive_failures"]) == ("active", 0)
        clock.advance(delay)

    async def delivered() -> bool:
        return [b["Message"] for b in bot.received] == ["one"]

    await daemon.until(delivered)
