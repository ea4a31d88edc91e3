"""A conversation actor that raises is restarted from the store; an event it keeps failing on
is set aside as poisoned, visible and replayable, and the conversation goes on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import actors.conversation
from router.domain.events import CustomerEvent
from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter, base_config


class Faults:
    """Makes the conversation step raise on chosen customer messages: a bug in the core
    that only some inputs reach, which is what supervision is for."""

    def __init__(self) -> None:
        self.failing: dict[str, int] = {}  # message text -> crashes left (-1: always)
        self.crashes = 0

    def step(self, real: Any) -> Any:
        def faulty(conversation: Any, lanes: Any, event: Any, ctx: Any) -> Any:
            if isinstance(event, CustomerEvent):
                left = self.failing.get(str(event.fields.get("Message")), 0)
                if left:
                    self.failing[str(event.fields.get("Message"))] = left - 1
                    self.crashes += 1
                    raise RuntimeError("the step broke")
            return real(conversation, lanes, event, ctx)

        return faulty


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    found = Faults()
    monkeypatch.setattr(actors.conversation, "handle", found.step(actors.conversation.handle))
    yield found


async def start(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> tuple[Daemon, ManualClock]:
    clock = ManualClock()
    config = base_config(peers, tmp_path / "router.db")
    config["conversations"] = {"max_restarts": 3, "restart_window_s": 10, "restart_backoff_s": 0.1}
    return await start_router(config, clock=clock), clock


async def restart_when_due(
    daemon: Daemon, clock: ManualClock, crashes: int, faults: Faults
) -> None:
    """Wait for the crash to be seen and its restart timer set, then let the backoff pass."""

    async def timer_set() -> bool:
        _, view = await daemon.get_debug("/debug/directory")
        return faults.crashes >= crashes and view["restarting"] == 1 and bool(clock.pending())

    await daemon.until(timer_set)
    clock.advance(clock.pending()[0])


async def bot_view(daemon: Daemon) -> dict[str, Any]:
    _, views = await daemon.get_debug("/debug/integrations")
    return next(v for v in views if v["id"] == "support-bot")


async def test_a_crash_restarts_the_conversation_and_events_wait_in_order(
    start_router: StartRouter, peers: Peers, tmp_path: Path, faults: Faults
) -> None:
    daemon, clock = await start(start_router, peers, tmp_path)
    await daemon.customer("hello", "m1")
    [first] = await peers.bot.wait_for(1)
    faults.failing["flaky"] = 2
    await daemon.customer("flaky", "m2")
    await restart_when_due(daemon, clock, 1, faults)
    await daemon.customer("after", "m3")  # arrives while the conversation is restarting
    await restart_when_due(daemon, clock, 2, faults)
    bodies = await peers.bot.wait_for(3)
    assert [b["Message"] for b in bodies] == ["hello", "flaky", "after"]
    assert {b["Conversationid"] for b in bodies} == {first["Conversationid"]}
    view = await bot_view(daemon)
    assert (view["restarts"], view["poisoned_events"]) == (2, 0)
    _, poisoned = await daemon.get_debug("/debug/poisoned-events")
    assert poisoned["poisoned_events"] == []


async def test_an_event_that_keeps_failing_is_set_aside_and_can_be_replayed(
    start_router: StartRouter, peers: Peers, tmp_path: Path, faults: Faults
) -> None:
    daemon, clock = await start(start_router, peers, tmp_path)
    faults.failing["poison"] = -1
    await daemon.customer("hello", "m1")
    [first] = await peers.bot.wait_for(1)
    await daemon.customer("poison", "m2")
    await daemon.customer("after", "m3")
    for crashes in (1, 2, 3):  # three restarts, each after a longer backoff
        await restart_when_due(daemon, clock, crashes, faults)
    # The fourth crash is past the intensity: the event is set aside and the next one goes on.
    bodies = await peers.bot.wait_for(2)
    assert [b["Message"] for b in bodies] == ["hello", "after"]
    assert bodies[1]["Conversationid"] == first["Conversationid"]
    _, listed = await daemon.get_debug("/debug/poisoned-events")
    [poisoned] = listed["poisoned_events"]
    assert poisoned["conversation_id"] == first["Conversationid"]
    assert poisoned["error"] == "RuntimeError: the step broke"
    assert poisoned["body"]["Message"] == "poison"
    view = await bot_view(daemon)
    assert (view["restarts"], view["poisoned_events"]) == (3, 1)

    faults.failing.clear()  # the bug is fixed: the operator replays the event
    status, body = await daemon.admin(
        "POST", f"/v1/admin/poisoned-events/{poisoned['inbox_id']}/replay"
    )
    assert (status, body) == (202, {"replayed": poisoned["inbox_id"]})
    bodies = await peers.bot.wait_for(3)
    assert bodies[2]["Message"] == "poison"
    assert bodies[2]["Conversationid"] == first["Conversationid"]
    _, listed = await daemon.get_debug("/debug/poisoned-events")
    assert listed["poisoned_events"] == []
    status, body = await daemon.admin(
        "POST", f"/v1/admin/poisoned-events/{poisoned['inbox_id']}/replay"
    )
    assert (status, body["error"]) == (404, "unknown_poisoned_event")


async def test_flow_only_conversations_are_supervised_by_the_directory(
    start_router: StartRouter, peers: Peers, tmp_path: Path, faults: Faults
) -> None:
    daemon, clock = await start(start_router, peers, tmp_path)
    faults.failing["poison"] = -1
    await daemon.customer("poison", "f1", asset="wa-1")
    await daemon.customer("after", "f2", asset="wa-1")
    for crashes in (1, 2, 3):
        await restart_when_due(daemon, clock, crashes, faults)
    [after] = await peers.flow.wait_for(1)
    assert after["Message"] == "after"
    _, view = await daemon.get_debug("/debug/directory")
    assert (view["flow_restarts"], view["flow_poisoned_events"]) == (3, 1)
    assert view["restarting"] == 0


async def test_a_poisoned_event_stays_set_aside_across_a_restart_of_the_daemon(
    start_router: StartRouter, peers: Peers, tmp_path: Path, faults: Faults
) -> None:
    daemon, clock = await start(start_router, peers, tmp_path)
    faults.failing["poison"] = -1
    await daemon.customer("poison", "m1")
    for crashes in (1, 2, 3):
        await restart_when_due(daemon, clock, crashes, faults)

    async def set_aside() -> bool:
        _, listed = await daemon.get_debug("/debug/poisoned-events")
        return len(listed["poisoned_events"]) == 1

    await daemon.until(set_aside)
    await daemon.router.stop()
    faults.failing.clear()
    again, _ = await start(start_router, peers, tmp_path)
    await again.customer("next", "m2")
    [body] = await peers.bot.wait_for(1)
    assert body["Message"] == "next"
    _, listed = await again.get_debug("/debug/poisoned-events")
    assert len(listed["poisoned_events"]) == 1
