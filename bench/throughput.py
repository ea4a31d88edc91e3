"""Intake -> bot throughput: the router beside a bare aiohttp relay, same load, same run.

    python -m bench.throughput [--runs 5] [--seconds 5] [--concurrency 64] [--users 1000]

The relay does the least version of the router's job: receive a customer message, forward
it to the same fake bot, answer; no disk. The router stores every message durably before its
202 and delivers it to the bot afterwards. Runs alternate relay, router, relay, ...; a run's
figure is messages the bot received per second, counted until every accepted message has
arrived. The ratio is of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the processes under test --------------------------------------------------------------


def serve_bot(port: int) -> None:
    """A fake bot that counts what it receives."""
    received = 0

    async def post(request: web.Request) -> web.Response:
        nonlocal received
        await request.read()
        received += 1
        return web.json_response({"ok": True})

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"received": received})

    app = web.Application()
    app.router.add_post("/bot", post)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_relay(port: int, bot_url: str) -> None:
    """Receive, forward to the bot, answer: no disk, no retries, no state."""
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[session_key] = aiohttp.ClientSession()
        yield
        await app[session_key].close()

    async def event(request: web.Request) -> web.Response:
        body = await request.json()
        async with request.app[session_key].post(bot_url, json=body) as answer:
            await answer.read()
        return web.json_response({"accepted": True}, status=202)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/channels/{asset}/events", event)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def router_config(
    port: int,
    debug_port: int,
    bot_url: str,
    store: Path,
    *,
    channel_url: str = "http://127.0.0.1:9/out",
    webhook_token: str | None = None,
    max_live: int | None = None,
) -> str:
    """One bot, one SMS asset routed to it; the other cases add a channel that counts, a
    known bot webhook token, or a resident limit."""
    token_line = f'webhook_token = "{webhook_token}"\n' if webhook_token else ""
    live = f"[conversations]\nmax_live = {max_live}\n" if max_live else ""
    return f"""
[server]
host = "127.0.0.1"
port = {port}
max_connections = 4096  # every client shares one address
max_connections_per_address = 4096
[debug]
host = "127.0.0.1"
port = {debug_port}
[admin]
token = "bench-admin"
[store]
path = "{store}"
# Every client is on loopback and the point is saturation: no intake rate limits.
[limits]
asset_rate_per_s = 0
integration_rate_per_s = 0
ccsp_rate_per_s = 0
{live}[[integrations]]
id = "bot"
name = "Bench bot"
url = "{bot_url}"
access_token = "bot-secret"
{token_line}[[assets]]
id = "asset"
channel = "SMS"
service = "svc"
outbound_url = "{channel_url}"
token = "{TOKEN}"
[[services]]
id = "svc"
[[services.rules]]
on = "incoming_message"
action = "forward_to_bot"
bot = "bot"
"""


# The checkout this bench belongs to: what it starts (`-m router.cli`, its own peers) is
# imported from here, whatever directory the bench was started from.
CHECKOUT = Path(__file__).resolve().parents[1]


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=CHECKOUT,
    )


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as answer:
                    if answer.status < 500:
                        return
            await asyncio.sleep(0.05)


# -- the load ------------------------------------------------------------------------------


async def drive(
    session: aiohttp.ClientSession, url: str, seconds: float, concurrency: int, users: int
) -> int:
    """Send customer messages from `concurrency` clients for `seconds`; how many were accepted."""
    accepted = 0
    sent = 0
    stop_at = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def client(worker: int) -> None:
        nonlocal accepted, sent
        while time.perf_counter() < stop_at:
            sent += 1
            n = sent
            body = {
                "Event": "Incoming message",
                "Userid": f"user-{(worker * 7919 + n) % users}",
                "Message": "hello",
                "Messageid": f"m-{worker}-{n}",
            }
            async with session.post(url, json=body, headers=headers) as answer:
                await answer.read()
                if answer.status == 202:
                    accepted += 1

    await asyncio.gather(*(client(w) for w in range(concurrency)))
    return accepted


async def bot_count(session: aiohttp.ClientSession, bot: str) -> int:
    async with session.get(f"{bot}/count") as answer:
        return int((await answer.json())["received"])


async def one_run(kind: str, args: argparse.Namespace) -> float:
    bot_port, port, debug_port = free_port(), free_port(), free_port()
    bot = f"http://127.0.0.1:{bot_port}"
    procs = [spawn("-m", "bench.throughput", "--serve-bot", str(bot_port))]
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "relay":
            procs.append(spawn("-m", "bench.throughput", "--serve-relay", str(port), f"{bot}/bot"))
        else:
            config = Path(tmp) / "router.toml"
            config.write_text(router_config(port, debug_port, f"{bot}/bot", Path(tmp) / "r.db"))
            procs.append(spawn("-m", "router.cli", "serve", "--config", str(config)))
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                await wait_up(session, f"{bot}/count")
                await wait_up(session, f"http://127.0.0.1:{port}/")
                start = time.perf_counter()
                url = f"http://127.0.0.1:{port}/v1/channels/asset/events"
                accepted = await drive(session, url, args.seconds, args.concurrency, args.users)
                async with asyncio.timeout(120):
                    while await bot_count(session, bot) < accepted:
                        await asyncio.sleep(0.01)
                return accepted / (time.perf_counter() - start)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)


async def compare(args: argparse.Namespace) -> None:
    figures: dict[str, list[float]] = {"relay": [], "router": []}
    for run in range(args.runs):
        for kind in ("relay", "router"):
            rate = await one_run(kind, args)
            figures[kind].append(rate)
            print(f"run {run + 1} {kind:<6} {rate:>8,.0f} msg/s", flush=True)
    relay, router = (statistics.median(figures[k]) for k in ("relay", "router"))
    print(f"median relay  {relay:>8,.0f} msg/s")
    print(f"median router {router:>8,.0f} msg/s")
    print(f"router/relay  {router / relay:.2f}  (cpus: {os.cpu_count()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--serve-bot", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bot:
        serve_bot(args.serve_bot)
    elif args.serve_relay:
        serve_relay(int(args.serve_relay[0]), args.serve_relay[1])
    else:
        asyncio.run(compare(args))


if __name__ == "__main__":
    main()
