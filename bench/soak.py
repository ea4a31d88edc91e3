"""Soak: a long run at half of saturation with hostile clients mixed in; does anything grow?

    python -m bench.soak [--minutes 10] [--rate MSG_S] [--slow-clients 50] [--bad-per-s 20]

The router runs as a daemon of its own with the benchmarks' fake bot. Customers send at a
fixed rate (half of a short saturation run unless `--rate` is given); beside them, clients
that send their headers a byte at a time and never finish, and requests with bad bodies or
tokens. Every `--every` seconds it prints the router's RSS, open files, threads and asyncio
tasks beside what was accepted and delivered; at the end, how much each grew between the
first and the last fifth of the run. Traffic goes to 127.0.0.1 only, and it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.throughput import (
    TOKEN,
    bot_count,
    drive,
    free_port,
    router_config,
    spawn,
    wait_up,
)


@dataclass
class Sample:
    at: float
    rss_mib: float
    fds: int
    threads: int
    tasks: int
    accepted: int
    delivered: int
    healthz_ms: float


@dataclass
class Counts:
    accepted: int = 0
    refused: int = 0
    failed: int = 0
    hostile: int = 0
    samples: list[Sample] = field(default_factory=list)


def process_figures(pid: int) -> tuple[float, int, int]:
    """RSS in MiB, open file descriptors, threads: read from /proc."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


async def customers(
    session: aiohttp.ClientSession, url: str, rate: float, until: float, counts: Counts
) -> None:
    """An open loop: one message every 1/rate seconds whatever the answers, 1,000 users."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    start = time.monotonic()
    sent = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        body = {"Event": "Incoming message", "Userid": f"u{n % 1000}", "Message": "soak"}
        body["Messageid"] = f"soak-{n}"
        try:
            async with session.post(url, json=body, headers=headers) as answer:
                await answer.read()
                if answer.status == 202:
                    counts.accepted += 1
                else:
                    counts.refused += 1
        except (aiohttp.ClientError, OSError, TimeoutError):
            counts.failed += 1

    while (now := time.monotonic()) < until:
        due = start + sent / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(sent))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
    await asyncio.gather(*pending)


async def slow_client(host: str, port: int, until: float, counts: Counts) -> None:
    """Headers a byte a second, never finished, no token; again whenever it is cut off."""
    request = b"POST /v1/channels/asset/events HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nX-"
    while time.monotonic() < until:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        counts.hostile += 1
        try:
            for byte in request + b"a" * 10_000:
                if time.monotonic() >= until:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def bad_requests(
    session: aiohttp.ClientSession, url: str, per_s: float, until: float, counts: Counts
) -> None:
    """Wrong tokens, bodies that are not JSON, bodies nested too deep, in turn."""
    kinds = [
        ({"Authorization": "Bearer wrong"}, b'{"Event":"Incoming message"}'),
        ({"Authorization": f"Bearer {TOKEN}"}, b"{not json"),
        ({"Authorization": f"Bearer {TOKEN}"}, b"[" * 200 + b"]" * 200),
    ]
    n = 0
    while time.monotonic() < until:
        headers, body = kinds[n % len(kinds)]
        n += 1
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
        counts.hostile += 1
        await asyncio.sleep(1 / per_s)


async def healthz_ms(session: aiohttp.ClientSession, url: str) -> float:
    began = time.perf_counter()
    try:
        async with session.get(url) as answer:
            await answer.read()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return float("inf")
    return (time.perf_counter() - began) * 1000


async def soak(args: argparse.Namespace) -> None:
    bot_port, port, debug = free_port(), free_port(), free_port()
    bot = f"http://127.0.0.1:{bot_port}"
    procs = [spawn("-m", "bench.throughput", "--serve-bot", str(bot_port))]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "router.toml"
        config.write_text(router_config(port, debug, f"{bot}/bot", Path(tmp) / "r.db"))
        procs.append(spawn("-m", "router.cli", "serve", "--config", str(config)))
        router = procs[-1]
        timeout = aiohttp.ClientTimeout(total=30)
        # A bounded pool: the customers hold at most this many connections open, so what the
        # router holds is its own doing (an unbounded pool grows whenever answers slow down).
        connector = aiohttp.TCPConnector(limit=128)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                await wait_up(session, f"{bot}/count")
                await wait_up(session, f"http://127.0.0.1:{port}/")
                url = f"http://127.0.0.1:{port}/v1/channels/asset/events"
                rate, how = args.rate, "given"
                if rate is None:
                    began = time.perf_counter()
                    accepted = await drive(session, url, 5.0, 64, 1000)
                    while await bot_count(session, bot) < accepted:
                        await asyncio.sleep(0.05)
                    rate = accepted / (time.perf_counter() - began) / 2
                    how = "half of saturation"
                print(
                    f"soak: {args.minutes:g} min at {rate:,.0f} msg/s ({how}), "
                    f"{args.slow_clients} slow clients, {args.bad_per_s:g} bad requests/s",
                    flush=True,
                )
                counts = Counts()
                start = time.monotonic()
                until = start + args.minutes * 60
                base = await bot_count(session, bot)
                load = [
                    asyncio.create_task(customers(session, url, rate, until, counts)),
                    asyncio.create_task(bad_requests(session, url, args.bad_per_s, until, counts)),
                    *(
                        asyncio.create_task(slow_client("127.0.0.1", port, until, counts))
                        for _ in range(args.slow_clients)
                    ),
                ]
                print(
                    f"{'s':>5} {'RSS MiB':>8} {'fds':>5} {'threads':>8} {'tasks':>6} "
                    f"{'accepted':>9} {'delivered':>10} {'healthz ms':>11}",
                    flush=True,
                )
                while time.monotonic() < until:
                    await asyncio.sleep(args.every)
                    rss, fds, threads = process_figures(router.pid)
                    async with session.get(f"http://127.0.0.1:{debug}/debug/runtime") as answer:
                        tasks = int((await answer.json()).get("tasks", -1))
                    sample = Sample(
                        time.monotonic() - start,
                        rss,
                        fds,
                        threads,
                        tasks,
                        counts.accepted,
                        await bot_count(session, bot) - base,
                        await healthz_ms(session, f"http://127.0.0.1:{debug}/healthz"),
                    )
                    counts.samples.append(sample)
                    print(
                        f"{sample.at:>5.0f} {sample.rss_mib:>8.1f} {sample.fds:>5} "
                        f"{sample.threads:>8} {sample.tasks:>6} {sample.accepted:>9,} "
                        f"{sample.delivered:>10,} {sample.healthz_ms:>11.1f}",
                        flush=True,
                    )
                await asyncio.gather(*load)
                async with asyncio.timeout(120):
                    while await bot_count(session, bot) - base < counts.accepted:
                        await asyncio.sleep(0.1)
                report(counts)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)


def report(counts: Counts) -> None:
    fifth = max(1, len(counts.samples) // 5)
    first, last = counts.samples[:fifth], counts.samples[-fifth:]
    print(
        f"accepted {counts.accepted:,}, refused {counts.refused:,}, failed {counts.failed:,}, "
        f"hostile connections and requests {counts.hostile:,}; all accepted delivered"
    )
    for name in ("rss_mib", "fds", "threads", "tasks"):
        before = statistics.mean(getattr(s, name) for s in first)
        after = statistics.mean(getattr(s, name) for s in last)
        print(
            f"  {name:<8} first fifth {before:>8.1f}  last fifth {after:>8.1f}  "
            f"change {after - before:+.1f}"
        )
    worst = max(s.healthz_ms for s in counts.samples)
    print(f"  /healthz slowest sample {worst:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, help="customer messages/s (default: half of a 5 s saturation run)"
    )
    parser.add_argument("--slow-clients", type=int, default=50)
    parser.add_argument("--bad-per-s", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
