"""HTTP-level cases, the router beside a bare relay: round trip, latency, new conversations, health.

    python -m bench.http_cases [--case b|c|d|healthz|all] [--runs 5] [--seconds 4]

Every case runs the router (`router serve`, SQLite on disk) and, where a baseline makes
sense, a bare aiohttp relay doing the least version of the same job (no disk, no state),
under the same load generator and concurrency, in the same invocation:

(b) round trip: the fake bot answers each delivery and then posts a reply to the bot webhook;
    the reply goes on to a fake channel. Figure: customer messages whose reply reached the
    channel, per second; runs alternate relay, router; the ratio is of the medians.
(c) latency at half the router's saturation rate (case (a)'s closed-loop median) with 10,000
    conversations resident: an open-loop load over 10,000 warmed-up users, each message
    carrying its send time on the system-wide monotonic clock, read back by the bot.
(d) new conversations per second: every message from a user never seen before, beside the
    relay and beside case (a)'s router figure.
(healthz) GET /healthz on the debug port every 20 ms, from a separate process, while case
    (a)'s load saturates the router.

Case (a) (`bench.throughput`) runs first whenever (c) or (d) needs its figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import throughput
from bench.throughput import TOKEN, free_port, spawn, wait_up

BOT_ID = "bot"
WEBHOOK_TOKEN = "bench-hook"
RESIDENT = 10_000
REPLY_WORKERS = 64
HEALTHZ_INTERVAL_S = 0.02
KINDS = ("relay", "router")

Body = dict[str, str]
Figures = dict[str, list[float]]


# -- the peers: fake bot, relay, health poller (each its own process) ----------------------


@dataclass
class BotStats:
    received: int = 0
    replied: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def note(self, message: object) -> None:
        """Messages sent as `t=<monotonic seconds>` carry their send time; keep how long
        they took. CLOCK_MONOTONIC is one clock for every process on the machine."""
        if isinstance(message, str) and message.startswith("t="):
            self.latencies_ms.append((time.monotonic() - float(message[2:])) * 1000)


async def reply_worker(
    session: aiohttp.ClientSession, url: str, queue: asyncio.Queue[str], stats: BotStats
) -> None:
    """Reply to one conversation at a time, as a bot's backend would after answering."""
    while True:
        conversation = await queue.get()
        body = {
            "eventid": "1001",
            "Conversationid": conversation,
            "Message": "re: hello",
            "Messagetype": "text",
        }
        try:
            async with session.post(url, json=body) as answer:
                await answer.read()
                ok = answer.status < 300
        except aiohttp.ClientError:
            ok = False
        stats.replied += ok
        stats.failed += not ok


def serve_bot(port: int, reply_url: str) -> None:
    """A fake bot: counts deliveries, keeps the latency of timed ones and, given a reply URL,
    replies to each. It answers the delivery first and replies afterwards, so the router's
    attempt never waits on the bot's own reply."""
    stats = BotStats()
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def workers(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [
                asyncio.create_task(reply_worker(session, reply_url, queue, stats))
                for _ in range(REPLY_WORKERS if reply_url != "-" else 0)
            ]
            yield
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def post(request: web.Request) -> web.Response:
        body = await request.json()
        stats.received += 1
        stats.note(body.get("Message"))
        if reply_url != "-":
            queue.put_nowait(str(body["Conversationid"]))
        return web.json_response({"ok": True})

    async def count(request: web.Request) -> web.Response:
        counts = {"received": stats.received, "replied": stats.replied, "failed": stats.failed}
        return web.json_response(counts)

    async def latencies(request: web.Request) -> web.Response:
        return web.json_response(stats.latencies_ms)

    app = web.Application()
    app.cleanup_ctx.append(workers)
    app.router.add_post("/bot", post)
    app.router.add_get("/count", count)
    app.router.add_get("/latencies", latencies)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_relay(port: int, bot_url: str, channel_url: str) -> None:
    """The least router: a customer message goes to the bot under its user id as the
    conversation id, a bot reply goes to the channel addressed to that id. No disk, no state."""
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[session_key] = aiohttp.ClientSession()
        yield
        await app[session_key].close()

    async def forward(request: web.Request, url: str, body: dict[str, Any]) -> web.Response:
        async with request.app[session_key].post(url, json=body) as answer:
            await answer.read()
        return web.json_response({"accepted": True}, status=202)

    async def channel_event(request: web.Request) -> web.Response:
        body = await request.json()
        body["Conversationid"] = body.get("Userid")
        return await forward(request, bot_url, body)

    async def bot_event(request: web.Request) -> web.Response:
        body = await request.json()
        out = {"Userid": body.get("Conversationid"), "Message": body.get("Message", "")}
        return await forward(request, channel_url, out)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/channels/{asset}/events", channel_event)
    app.router.add_post("/v1/bots/{integration}/{token}", bot_event)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def poll_healthz(url: str, seconds: float) -> None:
    """GET `url` every 20 ms for `seconds` over one kept-alive connection; print the latencies
    as JSON. A process of its own, so the load generator's loop does not delay the polls."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    latencies: list[float] = []
    failures = 0
    next_at = time.monotonic()
    stop_at = next_at + seconds
    while next_at < stop_at:
        time.sleep(max(0.0, next_at - time.monotonic()))
        start = time.perf_counter()
        conn.request("GET", parts.path)
        answer = conn.getresponse()
        answer.read()
        latencies.append((time.perf_counter() - start) * 1000)
        failures += answer.status != 200
        next_at = max(next_at + HEALTHZ_INTERVAL_S, time.monotonic())
    conn.close()
    print(json.dumps({"latencies_ms": latencies, "failures": failures}))


# -- starting and stopping what is measured ------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """The addresses of one run's processes: the router or relay, the bot, the channel."""

    kind: str
    public: str
    debug: str
    bot: str
    channel: str

    @property
    def events(self) -> str:
        return f"{self.public}/v1/channels/asset/events"

    @property
    def webhook(self) -> str:
        return f"{self.public}/v1/bots/{BOT_ID}/{WEBHOOK_TOKEN}"


def port_of(url: str) -> str:
    return str(urllib.parse.urlsplit(url).port)


def router_config(stack: Stack, store: Path) -> str:
    """Case (a)'s setup plus a known bot webhook token and a channel that counts arrivals."""
    return throughput.router_config(
        int(port_of(stack.public)),
        int(port_of(stack.debug)),
        f"{stack.bot}/bot",
        store,
        channel_url=f"{stack.channel}/bot",
        webhook_token=WEBHOOK_TOKEN,
        max_live=RESIDENT,
    )


def new_stack(kind: str) -> Stack:
    public, debug, bot, channel = (f"http://127.0.0.1:{free_port()}" for _ in range(4))
    return Stack(kind, public, debug, bot, channel)


def spawn_stack(
    stack: Stack, replies: bool, tmp: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Start into `procs` as it goes, so the caller stops whatever did start. The fake channel
    is throughput's counting bot: counting arrivals is all it needs."""
    reply_url = stack.webhook if replies else "-"
    procs.append(spawn("-m", "bench.http_cases", "--serve-bot", port_of(stack.bot), reply_url))
    procs.append(spawn("-m", "bench.throughput", "--serve-bot", port_of(stack.channel)))
    if stack.kind == "relay":
        bot, channel = f"{stack.bot}/bot", f"{stack.channel}/bot"
        procs.append(
            spawn("-m", "bench.http_cases", "--serve-relay", port_of(stack.public), bot, channel)
        )
    else:
        config = tmp / "router.toml"
        config.write_text(router_config(stack, tmp / "r.db"))
        procs.append(spawn("-m", "router.cli", "serve", "--config", str(config)))


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, so each shuts down as it would in service; a kill only for one that hangs."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def running(
    kind: str, replies: bool = False
) -> AsyncIterator[tuple[Stack, aiohttp.ClientSession]]:
    """A fresh router (empty store) or relay with its bot and channel, stopped on the way out."""
    stack = new_stack(kind)
    with tempfile.TemporaryDirectory() as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            spawn_stack(stack, replies, Path(tmp), procs)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                for url in (f"{stack.bot}/count", f"{stack.channel}/count", f"{stack.public}/"):
                    await wait_up(session, url)
                yield stack, session
        finally:
            stop(procs)


# -- the load ------------------------------------------------------------------------------


def customer(user: str, message_id: str, text: str = "hello") -> Body:
    return {"Event": "Incoming message", "Userid": user, "Message": text, "Messageid": message_id}


def timed(seconds: float, make: Callable[[int], Body]) -> Iterator[Body]:
    """Bodies for `seconds` from the first one taken: the end of a closed-loop run."""
    stop_at = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < stop_at:
        yield make(n)
        n += 1


async def post_event(session: aiohttp.ClientSession, url: str, body: Body) -> bool:
    """One customer message; whether the router (or relay) accepted it."""
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        await r.read()
        return r.status == 202


async def closed_loop(
    session: aiohttp.ClientSession, url: str, concurrency: int, bodies: Iterator[Body]
) -> int:
    """`concurrency` clients each send the next body once the last is answered, until the
    bodies run out; how many were accepted. The clients share one iterator, so no body is
    sent twice."""
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        for body in bodies:
            ok = await post_event(session, url, body)
            accepted += ok  # after the await: `accepted += await ...` would read it before

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return accepted


@dataclass(frozen=True)
class OpenLoop:
    sent: int
    accepted: int
    seconds: float
    max_lag_ms: float  # how far behind its schedule the generator fell at worst


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, seconds: float
) -> OpenLoop:
    """Send at `rate` on a fixed schedule whatever the answers, round-robin over the resident
    users, each message stamped with its send time on the monotonic clock.

    The generator must not stall its own schedule: a stall sends what fell due meanwhile as
    one burst, to the relay and the router alike, and the burst, not the offered rate, then
    sets the p99. So its garbage collector is off for the run, after one full collection
    (the sends make no cyclic garbage), and each send joins a task group as it is made:
    gathering them all after the last held the last ones back while the gather set itself
    up. A send that fails stops the run."""
    total = int(rate * seconds)
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = time.monotonic()
        lag = 0.0
        tasks: list[asyncio.Task[bool]] = []

        async def send(i: int) -> bool:
            body = customer(f"user-{i % RESIDENT}", f"c-{i}", f"t={time.monotonic():.6f}")
            return await post_event(session, url, body)

        async with asyncio.TaskGroup() as group:
            for i in range(total):
                due = start + i / rate
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                lag = max(lag, time.monotonic() - due)
                tasks.append(group.create_task(send(i)))
        accepted = sum(task.result() for task in tasks)
        return OpenLoop(total, accepted, time.monotonic() - start, lag * 1000)
    finally:
        if collecting:
            gc.enable()


async def counts(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/count") as answer:
        return {k: int(v) for k, v in (await answer.json()).items()}


async def arrived(session: aiohttp.ClientSession, url: str, target: int) -> None:
    """Wait until the bot or channel at `url` has received `target` messages."""
    async with asyncio.timeout(120):
        while (await counts(session, url))["received"] < target:
            await asyncio.sleep(0.01)


async def replies_arrived(session: aiohttp.ClientSession, stack: Stack, target: int) -> None:
    """Wait for `target` replies at the channel; a reply the router refused would never come."""
    async with asyncio.timeout(120):
        while (await counts(session, stack.channel))["received"] < target:
            failed = (await counts(session, stack.bot))["failed"]
            if failed:
                raise RuntimeError(f"{stack.kind}: {failed} bot replies were refused")
            await asyncio.sleep(0.01)


# -- figures and tables --------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least `q` of the values at or below it."""
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Spread:
    count: int
    p50: float
    p99: float
    max: float


def spread(values: list[float]) -> Spread:
    ordered = sorted(values) or [math.nan]
    return Spread(len(values), percentile(ordered, 0.5), percentile(ordered, 0.99), ordered[-1])


async def alternate(runs: int, one: Callable[[str], Awaitable[float]], unit: str) -> Figures:
    """Relay then router, `runs` times, so drift on a shared machine hits both alike."""
    figures: Figures = {kind: [] for kind in KINDS}
    for run in range(runs):
        for kind in KINDS:
            figures[kind].append(await one(kind))
            print(f"  run {run + 1} {kind:<6} {figures[kind][-1]:>8,.0f} {unit}", flush=True)
    return figures


def medians_table(figures: Figures, unit: str) -> tuple[float, float]:
    relay, router = (statistics.median(figures[k]) for k in KINDS)
    print(f"  {'':<14}{'median ' + unit:>16}{'min':>10}{'max':>10}")
    for kind in KINDS:
        low, high = min(figures[kind]), max(figures[kind])
        print(f"  {kind:<14}{statistics.median(figures[kind]):>16,.0f}{low:>10,.0f}{high:>10,.0f}")
    print(f"  {'router/relay':<14}{router / relay:>16.2f}")
    return relay, router


# -- the cases -----------------------------------------------------------------------------


async def case_a(args: argparse.Namespace) -> float:
    """Case (a) by bench.throughput's own run; its router median is the saturation rate."""
    print(f"(a) intake -> bot, closed loop, {args.concurrency} clients, {args.users} users")
    figures = await alternate(args.runs, lambda kind: throughput.one_run(kind, args), "msg/s")
    return medians_table(figures, "msg/s")[1]


async def round_trip_run(kind: str, args: argparse.Namespace) -> float:
    async with running(kind, replies=True) as (stack, session):
        start = time.perf_counter()
        bodies = timed(args.seconds, lambda n: customer(f"user-{n % args.users}", f"b-{n}"))
        accepted = await closed_loop(session, stack.events, args.concurrency, bodies)
        await replies_arrived(session, stack, accepted)
        return accepted / (time.perf_counter() - start)


async def case_b(args: argparse.Namespace) -> None:
    print(
        f"(b) customer -> bot -> reply -> channel, {args.concurrency} clients, {args.users} users"
    )
    figures = await alternate(args.runs, lambda kind: round_trip_run(kind, args), "round trips/s")
    medians_table(figures, "round trips/s")


async def resident(session: aiohttp.ClientSession, stack: Stack) -> str:
    """The router's own count of running conversation actors; the relay keeps none."""
    if stack.kind == "relay":
        return "-"
    async with session.get(f"{stack.debug}/debug/directory") as answer:
        view = await answer.json()
    found = view.get("resident")
    return str(len(found) if isinstance(found, list | dict) else found)


@dataclass(frozen=True)
class LatencyRun:
    load: OpenLoop
    resident: str
    latency: Spread


async def latency_run(kind: str, rate: float, args: argparse.Namespace) -> LatencyRun:
    """Warm up one conversation per user, then the open loop; latencies as the bot saw them."""
    async with running(kind) as (stack, session):
        warm = (customer(f"user-{i}", f"warm-{i}", "warm") for i in range(RESIDENT))
        warmed = await closed_loop(session, stack.events, args.concurrency, warm)
        await arrived(session, stack.bot, warmed)
        live = await resident(session, stack)
        load = await open_loop(session, stack.events, rate, args.open_seconds)
        await arrived(session, stack.bot, warmed + load.accepted)
        async with session.get(f"{stack.bot}/latencies") as answer:
            latencies = [float(v) for v in await answer.json()]
        return LatencyRun(load, live, spread(latencies))


async def case_c(args: argparse.Namespace, saturation: float) -> None:
    """Relay then router, `--latency-runs` times: one run's p99 rests on its slowest 1%,
    which a burst elsewhere on a shared host moves by several ms, so the figure is the
    median of the runs' p99s for each, with every run shown."""
    rate = saturation / 2
    print(
        f"(c) intake -> bot latency, open loop {rate:,.0f} msg/s (half of {saturation:,.0f}),"
        f" {RESIDENT:,} users warmed up, {args.open_seconds:g} s, {args.latency_runs} runs each"
    )
    print(
        f"  {'':<8}{'run':>4}{'sent':>7}{'accepted':>9}{'sent/s':>8}{'lag ms':>8}{'resident':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
    )
    found: dict[str, list[Spread]] = {kind: [] for kind in KINDS}
    for run in range(args.latency_runs):
        for kind in KINDS:
            r = await latency_run(kind, rate, args)
            found[kind].append(r.latency)
            print(
                f"  {kind:<8}{run + 1:>4}{r.load.sent:>7}{r.load.accepted:>9}"
                f"{r.load.sent / r.load.seconds:>8,.0f}{r.load.max_lag_ms:>8.1f}{r.resident:>9}"
                f"{r.latency.p50:>8.2f}{r.latency.p99:>8.2f}{r.latency.max:>8.1f}",
                flush=True,
            )
    medians = {
        kind: (
            statistics.median(s.p50 for s in runs),
            statistics.median(s.p99 for s in runs),
        )
        for kind, runs in found.items()
    }
    for kind, (p50, p99) in medians.items():
        print(f"  {kind:<8} median of runs: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    (relay_p50, relay_p99), (router_p50, router_p99) = medians["relay"], medians["router"]
    print(
        f"  router-added: p50 {router_p50 - relay_p50:+.2f} ms,"
        f" p99 {router_p99 - relay_p99:+.2f} ms"
    )


async def new_conversations_run(kind: str, args: argparse.Namespace) -> float:
    async with running(kind) as (stack, session):
        start = time.perf_counter()
        bodies = timed(args.seconds, lambda n: customer(f"new-{n}", f"d-{n}"))
        accepted = await closed_loop(session, stack.events, args.concurrency, bodies)
        await arrived(session, stack.bot, accepted)
        return accepted / (time.perf_counter() - start)


async def case_d(args: argparse.Namespace, saturation: float) -> None:
    print(f"(d) every message from a new user, {args.concurrency} clients")
    figures = await alternate(args.runs, lambda kind: new_conversations_run(kind, args), "conv/s")
    router = medians_table(figures, "conv/s")[1]
    print(
        f"  {'router (d)/(a)':<14}{router / saturation:>16.2f}  (a) router {saturation:,.0f} msg/s"
    )


async def poll(url: str, seconds: float) -> tuple[list[float], int]:
    """Run the poller process; its latencies and how many answers were not 200."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.http_cases",
        "--poll-healthz",
        url,
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    found = json.loads(out)
    return [float(v) for v in found["latencies_ms"]], int(found["failures"])


@dataclass
class HealthPolls:
    idle: list[float] = field(default_factory=list)
    loaded: list[float] = field(default_factory=list)
    failures: int = 0
    rates: list[float] = field(default_factory=list)


async def healthz_run(args: argparse.Namespace, polls: HealthPolls) -> None:
    """Poll idle for a second, then under case (a)'s load, which starts first and ends last."""
    async with running("router") as (stack, session):
        url = f"{stack.debug}/healthz"
        idle, failures = await poll(url, 1.0)
        seconds = args.seconds + 1.5
        load = asyncio.create_task(
            throughput.drive(session, stack.events, seconds, args.concurrency, args.users)
        )
        await asyncio.sleep(0.5)
        loaded, more = await poll(url, args.seconds)
        accepted = await load
    polls.idle += idle
    polls.loaded += loaded
    polls.failures += failures + more
    polls.rates.append(accepted / seconds)
    print(f"  run {len(polls.rates)} {polls.rates[-1]:>8,.0f} msg/s accepted", flush=True)


async def case_healthz(args: argparse.Namespace) -> None:
    print(f"(healthz) GET /healthz every 20 ms, idle then under case (a)'s load ({args.runs} runs)")
    polls = HealthPolls()
    for _ in range(args.runs):
        await healthz_run(args, polls)
    print(f"  {'':<10}{'polls':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}")
    for name, values in (("idle", polls.idle), ("saturated", polls.loaded)):
        s = spread(values)
        print(f"  {name:<10}{s.count:>7}{s.p50:>8.2f}{s.p99:>8.2f}{s.max:>8.1f}")
    verdict = "met" if spread(polls.loaded).p99 <= 100 else "MISSED"
    print(
        f"  non-200: {polls.failures}; load {statistics.median(polls.rates):,.0f} msg/s median;"
        f" target p99 <= 100 ms {verdict}"
    )


async def run_cases(args: argparse.Namespace) -> None:
    cases = ["b", "c", "d", "healthz"] if args.case == "all" else [args.case]
    saturation = await case_a(args) if {"c", "d"} & set(cases) else 0.0
    for case in cases:
        print(flush=True)
        if case == "b":
            await case_b(args)
        elif case == "c":
            await case_c(args, saturation)
        elif case == "d":
            await case_d(args, saturation)
        else:
            await case_healthz(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--case", choices=["b", "c", "d", "healthz", "all"], default="all")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="each closed-loop run")
    parser.add_argument("--open-seconds", type=float, default=8.0, help="case (c)'s open loop")
    parser.add_argument("--latency-runs", type=int, default=3, help="case (c)'s runs of each")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--serve-bot", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--poll-healthz", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bot:
        serve_bot(int(args.serve_bot[0]), args.serve_bot[1])
    elif args.serve_relay:
        serve_relay(int(args.serve_relay[0]), args.serve_relay[1], args.serve_relay[2])
    elif args.poll_healthz:
        poll_healthz(args.poll_healthz[0], float(args.poll_healthz[1]))
    else:
        asyncio.run(run_cases(args))


if __name__ == "__main__":
    main()
