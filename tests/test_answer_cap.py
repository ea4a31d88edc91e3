"""A peer's answer is read up to `delivery.max_answer_bytes`: past it, declared or streamed,
the attempt fails at once with a reason, and nothing more of it is held; attempts in flight
per destination stay within `delivery.max_attempts_per_destination`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Peers, StartRouter, base_config

MakeServer = Callable[..., Awaitable[TestServer]]
LIMIT = 1024


@dataclass
class BigBot:
    """Answers every delivery 200 with a body of its kind: sized, chunked, or without end."""

    kind: str
    url: str = ""
    attempts: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.attempts += 1
        if self.kind == "sized":
            return web.Response(body=b"x" * (LIMIT + 1), content_type="application/json")
        if self.kind == "within":
            return web.Response(body=b"{" + b" " * (LIMIT - 2) + b"}")
        answer = web.StreamResponse()
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        sent = 0
        while self.kind == "endless" or sent < LIMIT + 1:
            await answer.write(b"y" * 100)
            sent += 100
            await asyncio.sleep(0.001)
        await answer.write_eof()
        return answer


async def attempts_of(daemon: Any) -> list[dict[str, Any]]:
    _, items = await daemon.get_debug("/debug/integrations")
    return list(items)


@pytest.mark.parametrize("kind", ["sized", "chunked", "endless"])
async def test_an_answer_past_the_cap_fails_the_attempt_at_once(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    aiohttp_server: MakeServer,
    kind: str,
) -> None:
    bot = BigBot(kind)
    server = await aiohttp_server(bot.app())
    bot.url = str(server.make_url("/bot"))
    config = base_config(peers, tmp_path / "router.db", inactive_after_failures=50)
    config["integrations"][0]["url"] = bot.url
    config["delivery"]["max_answer_bytes"] = LIMIT
    config["delivery"]["timeout_s"] = 30.0  # an endless answer must not wait for this
    daemon = await start_router(config)
    started = asyncio.get_running_loop().time()
    assert (await daemon.customer("hello", "m1", asset="sms-1"))[0] == 202
    _, dead = await daemon.until_dead_letters(1)
    [letter] = dead["dead_letters"]
    assert letter["last_error"] == f"answer larger than {LIMIT} bytes"
    assert letter["attempt"] == 5
    assert asyncio.get_running_loop().time() - started < 10


async def test_an_answer_within_the_cap_is_a_success(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: MakeServer
) -> None:
    bot = BigBot("within")
    server = await aiohttp_server(bot.app())
    config = base_config(peers, tmp_path / "router.db")
    config["integrations"][0]["url"] = str(server.make_url("/bot"))
    config["delivery"]["max_answer_bytes"] = LIMIT
    daemon = await start_router(config)
    assert (await daemon.customer("hello", "m1", asset="sms-1"))[0] == 202

    async def delivered() -> bool:
        return bot.attempts == 1 and (await daemon.get_debug("/healthz"))[0] == 200

    await daemon.until(delivered)
    [state] = [i for i in await attempts_of(daemon) if i["id"] == "support-bot"]
    assert (state["consecutive_failures"], state["dead_letters"]) == (0, 0)


async def test_a_verify_answer_past_the_cap_is_a_failed_verification(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: MakeServer
) -> None:
    bot = BigBot("endless")
    server = await aiohttp_server(bot.app())
    config = base_config(peers, tmp_path / "router.db")
    config["integrations"][0]["url"] = str(server.make_url("/bot"))
    config["delivery"]["max_answer_bytes"] = LIMIT
    daemon = await start_router(config)
    assert await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify") == (
        422,
        {
            "error": "verification_failed",
            "message": f"webhook verification failed: answer larger than {LIMIT} bytes",
        },
    )


@dataclass
class Counting:
    """A bot that takes a while over each delivery and remembers how many it held at once."""

    now: int = 0
    most: int = 0
    done: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.2)
        self.now -= 1
        self.done += 1
        return web.json_response({"ok": True})


async def test_attempts_in_flight_per_destination_stay_within_the_cap(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: MakeServer
) -> None:
    bot = Counting()
    server = await aiohttp_server(bot.app())
    config = base_config(peers, tmp_path / "router.db")
    config["integrations"][0]["url"] = str(server.make_url("/bot"))
    config["delivery"]["max_attempts_per_destination"] = 2
    daemon = await start_router(config)
    for n in range(6):  # six conversations, each with a delivery of its own
        assert (await daemon.customer("hi", f"m{n}", user=f"u{n}", asset="sms-1"))[0] == 202

    async def all_done() -> bool:
        return bot.done == 6

    await daemon.until(all_done)
    assert bot.most == 2
