"""Conversation actors cost no OS thread: ten thousand of them run on the daemon's loop."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from router.domain.commands import RouteChannel
from router.domain.events import CustomerEvent
from router.domain.rules import ChannelRoute
from tests.conftest import Peers, StartRouter, base_config

CONVERSATIONS = 10_000


@pytest.mark.timeout(180)
async def test_ten_thousand_conversations_add_no_thread(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a bot nobody answers: it goes inactive, the rest park
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = base_config(peers, tmp_path / "router.db", inactive_after_failures=1)
    config["integrations"][0]["url"] = f"http://127.0.0.1:{port}/bot"
    daemon = await start_router(config)
    assert (await daemon.get_debug("/healthz"))[0] == 200  # the store's reader is up
    assert (await daemon.get_debug("/debug/integrations"))[0] == 200  # and the debug port's
    before = threading.active_count()
    route = ChannelRoute(service="plain", mode="bot", bot="support-bot", ccsp=None, flow=None)
    fields = {"Message": "hi", "MessageType": "text", "Media": ""}
    for n in range(CONVERSATIONS):
        event = CustomerEvent(10_000_000 + n, "Incoming message", f"m{n}", fields)
        daemon.router.core.tell(RouteChannel(route, "sms-1", "SMS", f"user-{n}", event))

    async def all_parked() -> bool:
        _, items = await daemon.get_debug("/debug/integrations")
        return bool(items[0]["parked"] == CONVERSATIONS)

    await daemon.until(all_parked, timeout=60)
    _, directory = await daemon.get_debug("/debug/directory")
    assert directory["resident"] == CONVERSATIONS
    assert threading.active_count() == before
