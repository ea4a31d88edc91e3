"""`GET /metrics` on the debug port, scraped over HTTP after real traffic: each family is
there, with the values the scenario made."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors.messages import Inspect
from router.io.metrics import Metrics
from tests.clock import ManualClock
from tests.conftest import ASSET_TOKEN, Daemon, Peers, StartRouter, base_config
from tests.test_supervision import Faults, faults, restart_when_due  # noqa: F401

DELAYS = [60, 300, 900, 2340]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(daemon: Daemon) -> Samples:
    status, text = await daemon.get_debug("/metrics")
    assert status == 200
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def wait_pending(daemon: Daemon, clock: ManualClock, expected: list[float]) -> None:
    async def due() -> bool:
        return clock.pending() == expected

    await daemon.until(due)


async def until_metric(daemon: Daemon, name: str, expected: float, **labels: str) -> Samples:
    found: Samples = {}

    async def reached() -> bool:
        nonlocal found
        found = await scrape(daemon)
        return value(found, name, **labels) == expected

    await daemon.until(reached)
    return found


async def test_intake_is_counted_by_source_channel_and_result(daemon: Daemon, peers: Peers) -> None:
    assert (await daemon.customer("hi", "m1"))[0] == 202
    assert (await daemon.customer("hi", "m1"))[0] == 200  # the same Messageid again
    assert (await daemon.customer("hi", "m2", asset="sms-1"))[0] == 202
    status, _ = await daemon.post("/v1/channels/fb-page-1/events", {}, token="wrong")
    assert status == 401
    status, _ = await daemon.post("/v1/channels/fb-page-1/events", None, ASSET_TOKEN, raw=b"{")
    assert status == 400
    [first, _] = await peers.bot.wait_for(2)
    cid = first["Conversationid"]
    assert (await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "x"}))[0] == 202
    assert (await daemon.bot({"eventid": "1001", "conversation_id": cid}, token="no"))[0] == 401
    assert (await daemon.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    agent = {"Event": "Agent message", "Conversationid": handover["Conversationid"], "Message": "m"}
    assert (await daemon.agent(agent))[0] == 202
    status, _ = await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "y"})
    assert status == 409
    await peers.channel.wait_for(2)
    await peers.bot.wait_for(3)  # the bot's copy of the agent's message

    attempts = "router_delivery_attempts_total"
    samples = await until_metric(daemon, attempts, 2, kind="channel", outcome="ok")
    samples = await until_metric(daemon, attempts, 3, kind="bot", outcome="ok")
    inbound = "router_inbound_events_total"
    expected = {
        ("channel", "FB", "accepted"): 1,
        ("channel", "FB", "duplicate"): 1,
        ("channel", "SMS", "accepted"): 1,
        ("channel", "", "unauthorized"): 1,
        ("channel", "FB", "invalid_json"): 1,
        ("bot", "FB", "accepted"): 2,
        ("bot", "", "unauthorized"): 1,
        ("bot", "", "conversation_with_agent"): 1,  # refused before its channel is known
        ("ccsp", "FB", "accepted"): 1,
    }
    counted = {
        (dict(labels)["source"], dict(labels)["channel"], dict(labels)["result"]): found
        for (name, labels), found in samples.items()
        if name == inbound
    }
    assert counted == expected
    assert value(samples, "router_http_errors_total", status="401") == 2
    assert value(samples, "router_http_errors_total", status="400") == 1
    assert value(samples, "router_http_errors_total", status="409") == 1
    assert value(samples, attempts, kind="ccsp", outcome="ok") == 1
    seconds = "router_delivery_attempt_duration_seconds_count"
    assert value(samples, seconds, kind="bot", outcome="ok") == 3
    assert value(samples, seconds, kind="channel", outcome="ok") == 2
    assert value(samples, "router_conversation_actors", state="resident") == 2
    assert value(samples, "router_conversation_activations_total", origin="new") == 2
    # Every message is on disk before its 202: each one was in a commit.
    commits = value(samples, "router_store_commit_duration_seconds_count")
    writes = value(samples, "router_store_commit_batch_size_sum")
    assert commits is not None and writes is not None
    assert writes >= commits >= 1
    assert value(samples, "router_store_commit_batch_size_count") == commits


async def test_retries_parking_integration_state_and_dead_letters(
    start_router: StartRouter, peers: Peers
) -> None:
    clock = ManualClock()
    daemon = await start_router(clock=clock, retry_delays_s=DELAYS, inactive_after_failures=2)
    peers.bot.script = [500, 500]
    await daemon.customer("hello", "m1")
    await wait_pending(daemon, clock, [60.0])
    clock.advance(60)  # the retry fails too: the bot is inactive, the delivery parked
    samples = await until_metric(
        daemon, "router_integration_state", 1, integration="support-bot", state="inactive"
    )
    active = value(samples, "router_integration_state", integration="support-bot", state="active")
    assert active == 0
    assert value(samples, "router_integration_consecutive_failures", integration="support-bot") == 2
    assert value(samples, "router_delivery_attempts_total", kind="bot", outcome="http_error") == 2
    assert value(samples, "router_delivery_retries_total", kind="bot") == 1
    samples = await until_metric(
        daemon, "router_integration_parked_conversations", 1, integration="support-bot"
    )
    assert value(samples, "router_deliveries_parked_total", integration="support-bot") == 1

    # Another message parks behind it; re-verification releases both.
    await daemon.customer("again", "m2")
    await until_metric(daemon, "router_deliveries_parked_total", 2, integration="support-bot")
    status, _ = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert status == 200
    [first, _] = await peers.bot.wait_for(2)
    samples = await until_metric(
        daemon, "router_integration_state", 1, integration="support-bot", state="active"
    )
    assert value(samples, "router_integration_consecutive_failures", integration="support-bot") == 0
    assert value(samples, "router_integration_parked_conversations", integration="support-bot") == 0
    assert value(samples, "router_deliveries_parked_total", integration="support-bot") == 2

    # The customer's channel fails every attempt: four retries, then a dead letter.
    peers.channel.script = [500] * 5
    cid = first["Conversationid"]
    await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "lost"})
    for delay in DELAYS:
        await wait_pending(daemon, clock, [float(delay)])
        clock.advance(delay)
    samples = await until_metric(
        daemon, "router_dead_letters_total", 1, kind="channel", reason="retries_exhausted"
    )
    assert value(samples, "router_delivery_retries_total", kind="channel") == 4
    assert (
        value(samples, "router_delivery_attempts_total", kind="channel", outcome="http_error") == 5
    )
    histogram = "router_delivery_attempt_duration_seconds"
    labels = {"kind": "channel", "outcome": "http_error"}
    assert value(samples, f"{histogram}_count", **labels) == 5
    assert value(samples, f"{histogram}_bucket", le="+Inf", **labels) == 5
    assert value(samples, "router_deliveries_parked_total", integration="support-bot") == 2


async def test_an_answer_too_late_is_counted_as_a_timeout(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router(clock=ManualClock(), retry_delays_s=DELAYS, timeout_s=0.2)
    peers.bot.script = [("sleep", 0.6)]
    await daemon.customer("hello", "m1")
    samples = await until_metric(
        daemon, "router_delivery_attempts_total", 1, kind="bot", outcome="timeout"
    )
    seconds = value(
        samples, "router_delivery_attempt_duration_seconds_sum", kind="bot", outcome="timeout"
    )
    assert seconds is not None and seconds >= 0.2


async def test_passivation_and_activation_from_the_store_are_counted(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    config["conversations"] = {"max_live": 1}
    daemon = await start_router(config)
    await daemon.customer("hi", "a1", user="ann")
    await peers.bot.wait_for(1)
    await daemon.customer("hi", "b1", user="ben")  # ann's actor leaves memory once idle
    await until_metric(daemon, "router_conversation_passivations_total", 1)
    await daemon.customer("again", "a2", user="ann")  # read back from the store
    await peers.bot.wait_for(3)
    samples = await until_metric(daemon, "router_conversation_passivations_total", 2)
    assert value(samples, "router_conversation_activations_total", origin="new") == 2
    assert value(samples, "router_conversation_activations_total", origin="store") == 1
    assert value(samples, "router_conversation_actors", state="resident") == 1
    assert value(samples, "router_conversation_actors", state="loading") == 0


async def test_restarts_and_poisoned_events_are_counted_by_integration(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    faults: Faults,  # noqa: F811
) -> None:
    clock = ManualClock()
    config = base_config(peers, tmp_path / "router.db")
    config["conversations"] = {"max_restarts": 3, "restart_window_s": 10, "restart_backoff_s": 0.1}
    daemon = await start_router(config, clock=clock)
    faults.failing["poison"] = -1
    await daemon.customer("poison", "m1")
    for crashes in (1, 2, 3):
        await restart_when_due(daemon, clock, crashes, faults)
    samples = await until_metric(
        daemon, "router_poisoned_events_total", 1, integration="support-bot"
    )
    assert value(samples, "router_conversation_restarts_total", integration="support-bot") == 3
    # A flow-only conversation has no integration.
    await daemon.customer("poison", "f1", asset="wa-1")
    for crashes in (5, 6, 7):
        await restart_when_due(daemon, clock, crashes, faults)
    samples = await until_metric(daemon, "router_poisoned_events_total", 1, integration="")
    assert value(samples, "router_conversation_restarts_total", integration="") == 3
    assert value(samples, "router_conversation_restarts_total", integration="support-bot") == 3


async def test_mailbox_depth_is_read_when_scraped(daemon: Daemon) -> None:
    router = daemon.router
    for _ in range(5):
        router.core.tell(Inspect())  # queued: nothing runs until this coroutine awaits
    samples = parse(generate_latest(router.metrics.registry).decode())
    assert value(samples, "router_mailbox_depth", actor="core") == 5
    assert value(samples, "router_mailbox_depth", actor="conversation") == 0
    after = await scrape(daemon)  # the loop ran: the core has handled them
    assert value(after, "router_mailbox_depth", actor="core") == 0


def test_live_families_are_absent_until_the_actors_run() -> None:
    text = generate_latest(Metrics().registry).decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "router_mailbox_depth" not in families
    assert "router_store_commit_duration_seconds" in families


async def test_an_event_and_the_step_it_sets_off_share_one_commit(
    start_router: StartRouter, peers: Peers
) -> None:
    """A bot's reply is routed as soon as its row is written inside its group: the step it
    sets off (the delivery to the channel) joins that commit, one fsync for both, and the
    delivery's removal once the channel has it is the only other commit."""
    daemon = await start_router(clock=ManualClock())
    await daemon.customer("hello", "m1")
    [first] = await peers.bot.wait_for(1)
    cid = first["Conversationid"]

    async def settled() -> bool:
        return not (await daemon.conversation(cid))["deliveries"]

    async def commits() -> tuple[float | None, float | None]:
        await daemon.until(settled)
        await daemon.router.store.drain()
        samples = await scrape(daemon)
        return (
            value(samples, "router_store_commit_duration_seconds_count"),
            value(samples, "router_store_commit_batch_size_sum"),
        )

    before = await commits()
    assert (await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "x"}))[0] == 202
    await peers.channel.wait_for(1)
    after = await commits()
    assert before[0] is not None and before[1] is not None
    assert after[0] is not None and after[1] is not None
    # The reply's row with its step, then the delivery's removal: two commits, three writes.
    assert (after[0] - before[0], after[1] - before[1]) == (2, 3)
