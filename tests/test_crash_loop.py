"""A crash loop: the daemon is killed with SIGKILL at random moments again and again while
customers write; every message it answered 202 reaches the bot, in order per customer, and
one that arrives twice arrives under the same `webhook-id`."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from tests.conftest import Peers
from tests.test_restart import (
    Launcher,
    RouterProcess,
    assert_in_order_per_user,
    launcher,  # noqa: F401  (the fixture)
    until_delivered,
)

pytestmark = pytest.mark.slow

ROUNDS = 10
USERS = ("ann", "ben", "cal", "dan")


class Writers:
    """Customers writing as fast as the daemon answers, until it is killed under them."""

    def __init__(self, starter: Launcher) -> None:
        self.launcher = starter
        self.accepted: dict[str, list[str]] = {user: [] for user in USERS}
        self.sequence = 0

    async def write(
        self, daemon: RouterProcess, user: str, round_: int, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            self.sequence += 1
            message_id = f"{user}-{round_:02d}-{self.sequence:06d}"
            try:
                status = await self.launcher.customer(daemon, user, message_id)
            except (aiohttp.ClientError, OSError):
                return  # killed mid-request: not accepted, so nothing is owed
            if status == 202:
                self.accepted[user].append(message_id)


@pytest.mark.timeout(300)
async def test_nothing_accepted_is_lost_across_ten_kills_under_load(
    launcher: Launcher,  # noqa: F811
    peers: Peers,
) -> None:
    launcher.write_config(retry_delays_s=[0.2] * 20, inactive_after_failures=100_000)
    writers = Writers(launcher)
    chance = random.Random(7)
    for round_ in range(ROUNDS):
        daemon = await launcher.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(writers.write(daemon, user, round_, stop)) for user in USERS]
        await asyncio.sleep(chance.uniform(0.2, 0.6))
        await daemon.kill()
        stop.set()
        await asyncio.gather(*tasks)
    final = await launcher.start()
    everything = [m for ids in writers.accepted.values() for m in ids]
    assert len(everything) > ROUNDS * len(USERS)
    await until_delivered(peers, everything)
    assert_in_order_per_user(peers, writers.accepted)
    assert_repeats_share_their_webhook_id(peers)
    assert await final.terminate() == 0, final.output()


def assert_repeats_share_their_webhook_id(peers: Peers) -> None:
    """At least once, but a message that arrives twice arrives under one `webhook-id`, so that
    the bot can tell the repeat and drop it."""
    ids: dict[str, set[str]] = {}
    for received in peers.bot.received:
        ids.setdefault(received.body["Messageid"], set()).add(received.headers["webhook-id"])
    assert all(len(found) == 1 for found in ids.values()), {
        m: found for m, found in ids.items() if len(found) > 1
    }
