"""Fixtures: real peers on loopback, and a real router with its store on disk."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from router.config.settings import parse_config
from router.daemon import Router
from tests.clock import ManualClock
from tests.peers import Peer

ADMIN = "admin-secret"
ASSET_TOKEN = "asset-secret"


async def execute(path: Path, *statements: str) -> list[Any]:
    """Statements on a connection of the test's own, on a thread: the daemon's group of
    writes commits after a loop hop or two, and a test that blocked the loop waiting for
    the lock that group holds would wait until its busy timeout. The last one's rows."""

    def run() -> list[Any]:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            rows: list[Any] = []
            for statement in statements:
                rows = conn.execute(statement).fetchall()
            return rows
        finally:
            conn.close()

    return await asyncio.to_thread(run)


class Peers:
    def __init__(self) -> None:
        self.bot = Peer("bot")
        self.ccsp = Peer("ccsp")
        self.flow = Peer("flow")
        self.channel = Peer("channel")


@pytest.fixture
async def peers(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Peers:
    found = Peers()
    for peer in (found.bot, found.ccsp, found.flow, found.channel):
        server = await aiohttp_server(peer.app())
        peer.url = str(server.make_url(f"/{peer.name}"))
    return found


def base_config(peers: Peers, store: Path, **delivery: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 4096},
        "debug": {"host": "127.0.0.1", "port": 0},
        "admin": {"token": ADMIN},
        "store": {"path": str(store)},
        "delivery": {
            "timeout_s": 5.0,  # generous: a starved test machine must not time out an answer
            "retry_delays_s": [0.05, 0.05, 0.05, 0.05],
            "inactive_after_failures": 5,
            **delivery,
        },
        "integrations": [
            {
                "id": "support-bot",
                "name": "Support bot",
                "url": peers.bot.url,
                "access_token": "bot-secret",
                "webhook_token": "bot-hook",
            }
        ],
        "ccsp": [
            {
                "id": "agents",
                "url": peers.ccsp.url,
                "access_token": "ccsp-secret",
                "webhook_token": "ccsp-hook",
            }
        ],
        "flows": [{"id": "crm", "url": peers.flow.url}],
        "assets": [
            {
                "id": "fb-page-1",
                "channel": "FB",
                "service": "support",
                "outbound_url": peers.channel.url,
                "token": ASSET_TOKEN,
            },
            {
                "id": "sms-1",
                "channel": "SMS",
                "service": "plain",
                "outbound_url": peers.channel.url,
                "token": ASSET_TOKEN,
            },
            {
                "id": "wa-1",
                "channel": "WA",
                "service": "flows",
                "outbound_url": peers.channel.url,
                "token": ASSET_TOKEN,
            },
        ],
        "services": [
            {
                "id": "support",
                "rules": [
                    {
                        "on": "incoming_message",
                        "action": "forward_to_bot_ccsp",
                        "bot": "support-bot",
                        "ccsp": "agents",
                    },
                    {
                        "on": "milestone_reached",
                        "bot": "support-bot",
                        "action": "invoke_flow",
                        "flow": "crm",
                    },
                    {"on": "handover", "action": "invoke_flow", "flow": "crm"},
                ],
            },
            {
                "id": "plain",
                "rules": [
                    {"on": "incoming_message", "action": "forward_to_bot", "bot": "support-bot"},
                ],
            },
            {
                "id": "flows",
                "rules": [
                    {"on": "incoming_message", "action": "invoke_flow", "flow": "crm"},
                ],
            },
        ],
    }


class Daemon:
    """A running router and an HTTP client for both of its ports."""

    def __init__(self, router: Router, session: aiohttp.ClientSession) -> None:
        self.router = router
        self.session = session

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.router.public_port}"

    @property
    def debug(self) -> str:
        return f"http://127.0.0.1:{self.router.debug_port}"

    async def post(
        self, path: str, body: Any, token: str | None = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with self.session.post(self.public + path, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)

    async def admin(
        self, method: str, path: str, body: Any = None, token: str = ADMIN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(
            method, self.public + path, json=body, headers=headers
        ) as resp:
            text = await resp.read()
            return resp.status, (await resp.json(content_type=None)) if text else None

    async def get_debug(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.debug + path) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def customer(
        self, text: str, message_id: str, user: str = "u1", asset: str = "fb-page-1", **extra: Any
    ) -> tuple[int, Any]:
        body = {
            "Event": "Incoming message",
            "Userid": user,
            "Message": text,
            "MessageType": "text",
            "Messageid": message_id,
            **extra,
        }
        return await self.post(f"/v1/channels/{asset}/events", body, ASSET_TOKEN)

    async def bot(
        self, body: dict[str, Any], integration: str = "support-bot", token: str = "bot-hook"
    ) -> tuple[int, Any]:
        return await self.post(f"/v1/bots/{integration}/{token}", body)

    async def agent(self, body: dict[str, Any], token: str = "ccsp-hook") -> tuple[int, Any]:
        return await self.post(f"/v1/ccsp/agents/{token}", body)

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        status, body = await self.get_debug(f"/debug/conversations/{conversation_id}")
        assert status == 200, body
        return dict(body)

    async def until_dead_letters(self, count: int) -> tuple[int, Any]:
        found: tuple[int, Any] = (0, None)

        async def enough() -> bool:
            nonlocal found
            found = await self.get_debug("/debug/dead-letters")
            return len(found[1]["dead_letters"]) >= count

        await self.until(enough)
        return found

    async def until(self, check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
        """Poll the daemon's own view until `check` holds; bounded so a failure cannot hang."""
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)


StartRouter = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start_router(peers: Peers, tmp_path: Path) -> AsyncIterator[StartRouter]:
    running: list[Daemon] = []
    session = aiohttp.ClientSession()

    async def start(
        config: dict[str, Any] | None = None, clock: ManualClock | None = None, **delivery: Any
    ) -> Daemon:
        raw = config or base_config(peers, tmp_path / "router.db", **delivery)
        router = Router(parse_config(raw, "test.toml"), clock=clock)
        await router.start()
        daemon = Daemon(router, session)
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        await daemon.router.stop()
    await session.close()


@pytest.fixture
async def daemon(start_router: StartRouter) -> Daemon:
    return await start_router()


# -- raw connections ---------------------------------------------------------------------


class Conn:
    """A raw connection from a loopback address of its own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    def close(self) -> None:
        self.writer.close()


Connect = Callable[..., Awaitable[Conn]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens raw connections, and closes every one of them after the test."""
    opened: list[Conn] = []

    async def open_one(port: int, source: str = "127.0.0.1") -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        opened.append(Conn(reader, writer))
        return opened[-1]

    yield open_one
    for conn in opened:
        conn.writer.close()
        with contextlib.suppress(ConnectionError):
            await conn.writer.wait_closed()
