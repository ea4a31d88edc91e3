"""`router loadtest`: start what is needed, drive the load, wait for it to drain, judge."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console

from router.loadtest.driver import Load, Tally, drive
from router.loadtest.live import progress
from router.loadtest.mix import QUIET, Mix, MixError, parse_mix
from router.loadtest.peers import Spec
from router.loadtest.report import as_json, plot, render, summarize
from router.loadtest.setup import router_config

ASSET = "lt-asset"
ASSET_TOKEN = "lt-asset-token"
PROFILES = {
    # The benchmark suite's case (a): customer messages only, to a bot that only counts.
    "intake-to-bot": {"conversations": 1000, "concurrency": 64, "duration": 5.0, "mix": QUIET},
    "mixed": {"conversations": 1000, "concurrency": 64, "duration": 10.0, "mix": Mix()},
}


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket is held until all are bound, or the kernel
    may hand the port it just took back to the next one."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class Target:
    """Where the customers send, and where the peers call back."""

    events: str
    asset_token: str
    bot_webhook: str | None
    ccsp_webhook: str | None
    health: str | None


class Processes:
    """The router and the peers this command started, stopped in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT)
        self.running.append((name, proc))
        log.close()

    def stop(self) -> None:
        for _, proc in reversed(self.running):
            proc.terminate()
        for _, proc in reversed(self.running):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def died(self) -> str | None:
        for name, proc in self.running:
            if proc.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")
                tail = "\n".join(log.strip().splitlines()[-5:])
                return f"the {name} exited with {proc.returncode}:\n{tail}"
        return None


async def wait_up(session: aiohttp.ClientSession, url: str, procs: Processes) -> None:
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as answer:
                    if answer.status < 500:
                        return
            if (why := procs.died()) is not None:
                raise RuntimeError(why)
            await asyncio.sleep(0.05)


def resolve(args: argparse.Namespace) -> tuple[Load, str]:
    profile = PROFILES[args.profile]
    mix = profile["mix"]
    assert isinstance(mix, Mix)
    if args.mix:
        mix = parse_mix(args.mix, mix)
    duration = args.duration
    if duration is None and args.count is None:
        duration = float(str(profile["duration"]))
    load = Load(
        conversations=args.conversations or int(str(profile["conversations"])),
        concurrency=args.concurrency or int(str(profile["concurrency"])),
        duration=duration,
        count=args.count,
        rate=args.rate,
        mix=mix,
        seed=args.seed,
    )
    rule = "forward_to_bot" if args.profile == "intake-to-bot" else "forward_to_bot_ccsp"
    return load, rule


async def run(args: argparse.Namespace, console: Console) -> int:
    load, rule = resolve(args)
    port, debug, spare = free_ports(3)  # all three apart: the peers' and the router's two
    peers_port = args.peers_port or spare
    at = f"http://127.0.0.1:{peers_port}"
    with tempfile.TemporaryDirectory(prefix="router-loadtest-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        if args.router is None:
            config = workdir / "router.toml"
            config.write_text(router_config(port, debug, at, workdir / "router.db", rule))
            base = f"http://127.0.0.1:{port}"
            target = Target(
                f"{base}/v1/channels/{ASSET}/events",
                ASSET_TOKEN,
                f"{base}/v1/bots/lt-bot/lt-bot-hook",
                f"{base}/v1/ccsp/lt-agents/lt-ccsp-hook",
                f"http://127.0.0.1:{debug}/healthz",
            )
        else:
            base = args.router.rstrip("/")
            target = Target(
                f"{base}/v1/channels/{args.asset}/events",
                args.asset_token,
                args.bot_webhook,
                args.ccsp_webhook,
                None,
            )
        spec = Spec(
            target.bot_webhook,
            target.ccsp_webhook,
            target.events,
            target.asset_token,
            load.mix,
            args.seed,
        )
        spec_json = orjson.dumps({**asdict(spec), "mix": load.mix.as_dict()}).decode()
        procs.spawn(
            "peers", "-m", "router.loadtest.peers", "--port", str(peers_port), "--spec", spec_json
        )
        if args.router is None:
            procs.spawn(
                "router",
                "-m",
                "router.cli",
                "serve",
                "--config",
                str(config),
                "--log-level",
                "warning",
            )
        try:
            return await exercise(args, console, load, target, at, procs)
        finally:
            procs.stop()


async def exercise(
    args: argparse.Namespace,
    console: Console,
    load: Load,
    target: Target,
    peers: str,
    procs: Processes,
) -> int:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await wait_up(session, f"{peers}/lt/progress", procs)
        if target.health is not None:
            await wait_up(session, target.health, procs)
        tally = Tally()
        show = not args.json and not args.no_progress and console.is_terminal
        sending = asyncio.create_task(
            drive(session, target.events, target.asset_token, load, tally)
        )
        await progress(session, peers, tally, sending, console if show else None)
        await sending
        accepted = orjson.dumps([s.mid for s in tally.accepted])
        async with session.post(f"{peers}/lt/expect", data=accepted) as answer:
            answer.raise_for_status()
        drained, drain_seconds = await drain(session, peers, args.drain_timeout)
        async with session.get(f"{peers}/lt/report") as answer:
            report: dict[str, Any] = orjson.loads(await answer.read())
    summary = summarize(tally, report, drained, drain_seconds)
    if args.json:
        sys.stdout.write(orjson.dumps(as_json(summary)).decode() + "\n")
    else:
        render(summary, console)
    if args.plot is not None:
        plot(tally, report, Path(args.plot))
    return 0 if summary.ok else 1


async def drain(session: aiohttp.ClientSession, peers: str, deadline: float) -> tuple[bool, float]:
    """Wait until everything accepted has arrived and the peers have nothing on the wire."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        async with session.get(f"{peers}/lt/progress") as answer:
            found = await answer.json()
        if found["missing"] == 0 and found["inflight"] == 0:
            return True, time.monotonic() - start
        await asyncio.sleep(0.01)
    return False, time.monotonic() - start


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=args.json)
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        console.print("loadtest: --plot needs matplotlib: pip install 'conversation-router[plot]'")
        return 2
    try:
        return asyncio.run(run(args, console))
    except MixError as exc:
        console.print(f"loadtest: --mix: {exc}")
        return 2
    except (RuntimeError, TimeoutError, aiohttp.ClientError, OSError) as exc:
        console.print(f"loadtest: {exc or type(exc).__name__}")
        return 2
    except KeyboardInterrupt:
        return 130
