"""Fake bots, CCSPs, channels and flows: small aiohttp apps that record what they get."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Peer:
    """Answers each POST by the next scripted behaviour (default 200 OK) and records it.

    A behaviour is an HTTP status (int), ("sleep", seconds) to answer too late (not recorded),
    or ("slow", seconds) to answer 200 after a while.
    `verify` decides what a {"Event": "Verify"} request gets back: "echo", "wrong" or a status.
    """

    name: str
    script: list[Any] = field(default_factory=list)
    verify: Any = "echo"
    received: list[Received] = field(default_factory=list)
    tried: list[Received] = field(default_factory=list)  # every attempt, answered or not
    verified: list[Received] = field(default_factory=list)  # the Verify challenges it got
    attempts: int = 0
    url: str = ""
    _changed: asyncio.Condition | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received]

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        if body.get("Event") != "Verify":
            self.tried.append(Received(body, dict(request.headers), raw))
        else:
            self.verified.append(Received(body, dict(request.headers), raw))
        if body.get("Event") == "Verify":
            if self.verify == "echo":
                return web.json_response({"challenge": body["challenge"]})
            if self.verify == "wrong":
                return web.json_response({"challenge": "not-it"})
            return web.Response(status=int(self.verify))
        self.attempts += 1
        behaviour = self.script.pop(0) if self.script else 200
        if isinstance(behaviour, tuple) and behaviour[0] == "sleep":
            await asyncio.sleep(behaviour[1])
            return web.json_response({"late": True})
        if isinstance(behaviour, tuple) and behaviour[0] == "slow":
            await asyncio.sleep(behaviour[1])
            behaviour = 200
        if behaviour >= 300:
            return web.json_response({"error": "scripted"}, status=behaviour)
        self.received.append(Received(body, dict(request.headers), raw))
        await self._notify()
        return web.json_response({"ok": True}, status=behaviour)

    async def _notify(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until `count` bodies arrived; the timeout only bounds a failing test."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.received) >= count)
        return self.bodies
