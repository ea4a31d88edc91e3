"""The directory's filter of identities with an open conversation on disk: a customer it has
never seen opens a conversation without a store read, and one whose conversation is on disk
(from before a restart, or passivated) always gets that conversation back."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import on_disk
from actors.on_disk import KeysOnDisk
from router.domain.state import conversation_key
from router.io.effects import Effect, Load
from tests.conftest import Daemon, Peers, StartRouter, base_config


def test_an_identity_added_is_always_held_and_most_others_are_not() -> None:
    keys = [conversation_key("fb-page-1", f"user-{n}", "svc", "bot") for n in range(20_000)]
    filter_ = KeysOnDisk.of(iter(keys[:10_000]), 10_000)
    assert all(filter_.may_hold(key) for key in keys[:10_000])
    maybes = sum(filter_.may_hold(key) for key in keys[10_000:])
    assert maybes < 10_000 * 0.05  # about one in seventy by design


def test_a_filter_opened_far_past_its_size_still_says_no_to_most_new_identities() -> None:
    keys = [conversation_key("fb-page-1", f"user-{n}", "svc", "bot") for n in range(60_000)]
    filter_ = KeysOnDisk(1_000)
    for key in keys[:30_000]:
        filter_.add(key)
    assert filter_.layers > 1
    assert all(filter_.may_hold(key) for key in keys[:30_000])
    maybes = sum(filter_.may_hold(key) for key in keys[30_000:])
    assert maybes < 30_000 * 0.04  # under about one in twenty-five, however many layers


def test_the_layers_stop_growing_at_their_cap_and_still_hold_every_identity_added(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(on_disk, "_MOST_BITS", 1 << 16)
    monkeypatch.setattr(on_disk, "_MOST_BITS_IN_ALL", 1 << 18)
    keys = [conversation_key("fb-page-1", f"user-{n}", "svc", "bot") for n in range(30_000)]
    filter_ = KeysOnDisk(100)
    for key in keys[:10_000]:
        filter_.add(key)
    layers = filter_.layers
    for key in keys[10_000:]:
        filter_.add(key)
    assert filter_.layers == layers  # full: the last layer takes the rest
    assert all(filter_.may_hold(key) for key in keys)


def loads_by_identity(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every store read the directory asks for by identity, as the edge is handed it."""
    seen: list[str] = []
    edge = daemon.router.edge
    submit = edge.submit

    def watched(effect: Effect) -> None:
        if isinstance(effect, Load) and effect.lookup.startswith("key:"):
            seen.append(effect.lookup)
        submit(effect)

    monkeypatch.setattr(edge, "submit", watched)
    return seen


async def test_a_new_customer_opens_a_conversation_without_reading_the_store(
    start_router: StartRouter, peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = await start_router(base_config(peers, tmp_path / "router.db"))
    loads = loads_by_identity(daemon, monkeypatch)
    for user in ("ann", "ben"):
        status, _ = await daemon.customer("hello", f"{user}-1", user=user)
        assert status == 202
    bodies = await peers.bot.wait_for(2)
    assert len({b["Conversationid"] for b in bodies}) == 2
    assert loads == []


async def test_a_customer_with_a_conversation_on_disk_gets_it_back_after_a_restart(
    start_router: StartRouter, peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    daemon = await start_router(config)
    await daemon.customer("before", "ann-1", user="ann")
    [before] = await peers.bot.wait_for(1)
    await daemon.router.stop()

    again = await start_router(config)
    loads = loads_by_identity(again, monkeypatch)
    await again.customer("after", "ann-2", user="ann")
    await again.customer("hello", "cat-1", user="cat")
    bodies = await peers.bot.wait_for(3)
    after = next(b for b in bodies if b["Message"] == "after")
    assert after["Conversationid"] == before["Conversationid"]
    newcomer = next(b for b in bodies if b["Message"] == "hello")
    assert newcomer["Conversationid"] != before["Conversationid"]
    ann = conversation_key("fb-page-1", "ann", "support", "support-bot")
    assert loads == [f"key:{ann}"]  # read for the customer on disk, not for the newcomer
