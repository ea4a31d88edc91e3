"""The customers: many conversations at once, each customer's messages one after another.

Customers are shared out among the clients, so a customer never has two messages on the wire
at once and their order is defined; the clients together make the concurrency.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

from router.loadtest.mix import Mix
from router.loadtest.peers import stamp
from router.loadtest.verdict import Sent


@dataclass
class Load:
    """How much, how fast: a `rate` of None is as fast as the router answers."""

    conversations: int
    concurrency: int
    duration: float | None
    count: int | None
    rate: float | None
    mix: Mix
    seed: int = 1


@dataclass
class Tally:
    """What the customers did so far; the progress display reads it while they run."""

    started: float = field(default_factory=time.monotonic)
    stopped: float | None = None
    sent: int = 0
    answered: int = 0
    accepted: list[Sent] = field(default_factory=list)
    intake: list[tuple[float, float]] = field(default_factory=list)  # (when, ms)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def in_flight(self) -> int:
        return self.sent - self.answered


async def drive(
    session: aiohttp.ClientSession, url: str, token: str, load: Load, tally: Tally
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    rolls = random.Random(load.seed)
    weight = load.mix.message / (load.mix.message + load.mix.postback)
    stop_at = tally.started + load.duration if load.duration is not None else None
    clients = max(1, min(load.concurrency, load.conversations))
    seqs = [0] * load.conversations

    def more() -> bool:
        if load.count is not None and tally.sent >= load.count:
            return False
        return stop_at is None or time.monotonic() < stop_at

    async def client(worker: int) -> None:
        mine = range(worker, load.conversations, clients)
        turn = 0
        while more():
            if load.rate is not None:
                due = tally.started + tally.sent / load.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if not more():
                        return
            user = mine[turn % len(mine)]
            turn += 1
            seqs[user] += 1
            seq = seqs[user]
            stream = f"c.u{user}"
            mid = f"{stream}.{seq}"
            if rolls.random() < weight:
                body = {"Event": "Incoming message", "Userid": f"u{user}", "Message": stamp(mid)}
            else:
                body = {"Event": "FB POSTBACK", "Userid": f"u{user}", "PostbackPayload": stamp(mid)}
            body["Messageid"] = mid
            tally.sent += 1
            began = time.monotonic()
            try:
                async with session.post(url, data=orjson.dumps(body), headers=headers) as answer:
                    payload = await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                tally.answered += 1
                tally.errors[f"intake: {type(exc).__name__}"] += 1
                continue
            ended = time.monotonic()
            tally.answered += 1
            if status == 202:
                tally.accepted.append(Sent(mid, stream, seq))
                tally.intake.append((ended, (ended - began) * 1000))
            else:
                code = orjson.loads(payload).get("error", "") if payload[:1] == b"{" else ""
                tally.errors[f"intake: {status} {code}".strip()] += 1

    try:
        await asyncio.gather(*(client(w) for w in range(clients)))
    finally:
        tally.stopped = time.monotonic()
