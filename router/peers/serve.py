"""`router peers --config PATH`: serve the example peers until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import dataclass
from typing import TextIO

import aiohttp
from aiohttp import web

from router.config.settings import Config, ConfigError, load_config
from router.peers.examples import Background, example_routes
from router.peers.link import Printer, Route, RouterLink, group_routes, json_handler, router_base


@dataclass
class RunningPeers:
    runners: list[web.AppRunner]
    session: aiohttp.ClientSession
    background: Background

    @property
    def addresses(self) -> list[tuple[str, int]]:
        found = []
        for runner in self.runners:
            for site in runner.sites:
                server = getattr(site, "_server", None)
                for sock in getattr(server, "sockets", None) or ():
                    name = sock.getsockname()
                    found.append((str(name[0]), int(name[1])))
        return found


async def start_servers(routes: list[Route]) -> list[web.AppRunner]:
    runners: list[web.AppRunner] = []
    try:
        for (host, port), same in group_routes(routes).items():
            app = web.Application()
            for route in same:
                app.router.add_post(route.path, json_handler(route.handler))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port).start()
    except BaseException:
        await stop_servers(runners)
        raise
    return runners


async def stop_servers(runners: list[web.AppRunner]) -> None:
    for runner in reversed(runners):
        await runner.cleanup()


async def start_peers(config: Config, out: TextIO, close_after: int = 3) -> RunningPeers:
    printer = Printer(out)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    link = RouterLink(router_base(config), config.admin_token, session)
    background = Background(printer)
    try:
        runners = await start_servers(
            example_routes(config, link, printer, background, close_after)
        )
    except BaseException:
        await session.close()
        raise
    return RunningPeers(runners, session, background)


async def stop_peers(peers: RunningPeers) -> None:
    await stop_servers(peers.runners)
    await peers.background.stop()
    await peers.session.close()


async def serve_peers(config: Config, close_after: int, out: TextIO = sys.stdout) -> None:
    peers = await start_peers(config, out, close_after)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        listening = ", ".join(f"{h}:{p}" for h, p in peers.addresses)
        Printer(out).line("peers", f"listening on {listening}; Ctrl-C stops them")
        await stop.wait()
    finally:
        await stop_peers(peers)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    peers = commands.add_parser(
        "peers",
        help="serve an example bot, contact center, channel and flow",
        description=(
            "Serve example peers on the URLs the configuration names: a bot that answers, "
            'hands over on "agent" and closes on "bye"; an agent that greets, answers and '
            "closes after a few messages; a channel that prints what the customer sees."
        ),
    )
    peers.add_argument("--config", required=True, metavar="PATH")
    peers.add_argument(
        "--close-after",
        type=int,
        default=3,
        metavar="N",
        help="customer messages the agent answers before closing its session (default: 3)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_peers(config, max(1, args.close_after)))
    except OSError as exc:
        print(f"cannot start the peers: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"cannot start the peers: {exc}", file=sys.stderr)
        return 2
    return 0
