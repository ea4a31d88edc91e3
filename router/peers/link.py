"""How a peer calls the router back, and where each peer listens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from router.config.settings import Config

Handler = Callable[[dict[str, Any], web.Request], Awaitable[web.StreamResponse]]


def router_base(config: Config) -> str:
    """The router's public base URL as a peer on this machine reaches it."""
    if config.server.public_url:
        return config.server.public_url.rstrip("/")
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{config.server.port}"


class RouterRefused(Exception):
    """The router answered a peer's call with an error; the peer says so and goes on."""


@dataclass
class RouterLink:
    """Webhook URLs are learnt from the file or, when the router generated the token, from
    the admin API, once, the first time a peer needs to call."""

    base: str
    admin_token: str
    session: aiohttp.ClientSession
    _webhooks: dict[tuple[str, str], str] = field(default_factory=dict)

    async def webhook(self, kind: str, peer_id: str, token: str | None) -> str:
        """`kind` is "integrations" (a bot) or "ccsp"."""
        known = self._webhooks.get((kind, peer_id))
        if known is not None:
            return known
        if token is not None:
            path = "bots" if kind == "integrations" else "ccsp"
            url = f"{self.base}/v1/{path}/{peer_id}/{token}"
        else:
            headers = {"Authorization": f"Bearer {self.admin_token}"}
            async with self.session.get(
                f"{self.base}/v1/admin/{kind}/{peer_id}", headers=headers
            ) as answer:
                if answer.status != 200:
                    raise RouterRefused(f"admin API answered {answer.status} for {kind}/{peer_id}")
                url = str((await answer.json())["webhook_url"])
        self._webhooks[(kind, peer_id)] = url
        return url

    async def post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(
            url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        ) as answer:
            payload = await answer.read()
            if answer.status >= 300:
                raise RouterRefused(f"{answer.status} {payload.decode(errors='replace')}")
            found = orjson.loads(payload) if payload else {}
            return found if isinstance(found, dict) else {}


@dataclass(frozen=True)
class Route:
    """One peer endpoint: where it listens and what answers there."""

    url: str
    handler: Handler

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.hostname or "127.0.0.1", port

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"


def group_routes(routes: list[Route]) -> dict[tuple[str, int], list[Route]]:
    """Peers that share a host and port share one server; two on one path cannot."""
    grouped: dict[tuple[str, int], list[Route]] = {}
    for route in routes:
        same = grouped.setdefault(route.address, [])
        if any(r.path == route.path for r in same):
            raise ValueError(f"two peers want {route.url}")
        same.append(route)
    return grouped


def json_handler(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": "invalid_json"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "invalid_json"}, status=400)
        return await handler(body, request)

    return handle


@dataclass
class Printer:
    """What each peer saw and did, one line each, for a person following along."""

    out: TextIO

    def line(self, who: str, text: str) -> None:
        self.out.write(f"{who:<22} {text}\n")
        self.out.flush()
