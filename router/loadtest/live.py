"""The live display while a load test sends: rate, in flight, errors, latency, arrivals."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.table import Table

from router.loadtest.driver import Tally
from router.loadtest.report import histogram


def frame(tally: Tally, peers: dict[str, Any], rate: float) -> Table:
    recent = [ms for t, ms in tally.intake[-5000:] if t > time.monotonic() - 5]
    h = histogram(recent)
    table = Table(title="router loadtest", show_header=False)
    table.add_row("elapsed", f"{time.monotonic() - tally.started:.1f} s")
    table.add_row("sent / accepted", f"{tally.sent:,} / {len(tally.accepted):,}")
    table.add_row("accepted/s", f"{rate:,.0f}")
    table.add_row("in flight", f"{tally.in_flight:,}")
    table.add_row("errors", f"{sum(tally.errors.values()):,}")
    table.add_row(
        "intake p50 / p99 (last 5 s)",
        f"{h.get_value_at_percentile(50) / 1000:.2f} / "
        f"{h.get_value_at_percentile(99) / 1000:.2f} ms",
    )
    received = peers.get("received", {})
    table.add_row(
        "arrived at bot / CCSP / channel",
        f"{received.get('bot', 0):,} / {received.get('ccsp', 0):,} / "
        f"{received.get('channel', 0):,}",
    )
    return table


async def progress(
    session: aiohttp.ClientSession,
    peers: str,
    tally: Tally,
    sending: asyncio.Task[None],
    console: Console | None,
) -> None:
    """Refresh four times a second until the customers stop; nothing without a console."""
    if console is None:
        await asyncio.wait([sending])
        return
    seen: dict[str, Any] = {}
    last = (time.monotonic(), 0)
    rate = 0.0
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while not sending.done():
            await asyncio.wait([sending], timeout=0.25)
            now, count = time.monotonic(), len(tally.accepted)
            if now - last[0] >= 1:
                rate = (count - last[1]) / (now - last[0])
                last = (now, count)
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{peers}/lt/progress") as answer:
                        seen = await answer.json()
            live.update(frame(tally, seen, rate))
