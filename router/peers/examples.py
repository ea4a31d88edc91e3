"""The example bot, contact center, channel and flow.

Each answers the router at once and does its own talking afterwards, in a task, as a real
peer would: the router's attempt never waits on the peer's next call back.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from router.config.settings import AssetConfig, CcspConfig, Config, FlowConfig, IntegrationConfig
from router.peers.link import Printer, Route, RouterLink, RouterRefused

OK = {"ok": True}


def short(conversation_id: object) -> str:
    text = str(conversation_id)
    return text[:8] if len(text) > 8 else text


def bearer_ok(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@dataclass
class Background:
    """Keeps the peers' own calls alive until they finish, and reports their failures."""

    printer: Printer
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def run(self, who: str, work: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except (RouterRefused, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self.printer.line(who, f"!! the router refused or could not be reached: {exc}")

        task = asyncio.create_task(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class ExampleBot:
    """Answers each message; hands over on "agent"; closes on "bye"."""

    config: IntegrationConfig
    link: RouterLink
    printer: Printer
    background: Background

    @property
    def who(self) -> str:
        return f"bot {self.config.id}"

    async def handle(self, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
        if not bearer_ok(request, self.config.access_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        event = str(body.get("Event", ""))
        cid = body.get("Conversationid")
        if event == "Verify":
            self.printer.line(self.who, "verified by the router")
            return web.json_response({"challenge": body.get("challenge")})
        if body.get("ConversationType") == "CCSP":
            self.printer.line(self.who, f"(copy, agent holds {short(cid)}) {body.get('Message')}")
            return web.json_response(OK)
        if event == "Incoming message":
            text = str(body.get("Message", ""))
            self.printer.line(self.who, f"<- {short(cid)}: {text}")
            self.background.run(self.who, self._answer(str(cid), text))
        elif event == "FB POSTBACK":
            payload = body.get("PostbackPayload")
            self.printer.line(self.who, f"<- {short(cid)}: postback {payload}")
            self.background.run(self.who, self._reply(str(cid), f"You chose {payload}."))
        elif event == "Agent Session Closed":
            self.printer.line(self.who, f"<- {short(cid)}: the agent left ({body.get('Reason')})")
            self.background.run(self.who, self._reply(str(cid), "The bot again: anything else?"))
        elif event == "Handover Failed":
            self.printer.line(self.who, f"<- {short(cid)}: handover failed ({body.get('Reason')})")
            self.background.run(
                self.who, self._reply(str(cid), "No agent could take this; I am still here.")
            )
        else:
            self.printer.line(
                self.who, f"<- {short(cid)}: {event} {body.get('DeliveryStatus', '')}"
            )
        return web.json_response(OK)

    async def _answer(self, cid: str, text: str) -> None:
        words = text.lower()
        if "agent" in words:
            await self._send({"Event": "Handover", "conversation_id": cid, "Reason": text})
            self.printer.line(self.who, f"-> {short(cid)}: handed over to an agent")
        elif "bye" in words:
            await self._reply(cid, "Goodbye!")
            await self._send({"Event": "Close", "conversation_id": cid})
            self.printer.line(self.who, f"-> {short(cid)}: closed the conversation")
        else:
            await self._reply(cid, f'You said "{text}". Write "agent" for a person, "bye" to end.')

    async def _reply(self, cid: str, text: str) -> None:
        await self._send(
            {"eventid": "1001", "conversation_id": cid, "message": text, "Messagetype": "text"}
        )
        self.printer.line(self.who, f"-> {short(cid)}: {text}")

    async def _send(self, body: dict[str, Any]) -> None:
        url = await self.link.webhook("integrations", self.config.id, self.config.webhook_token)
        await self.link.post(url, body)


@dataclass
class ExampleAgent:
    """A contact center with one agent: greets, answers, and closes after a few messages."""

    config: CcspConfig
    link: RouterLink
    printer: Printer
    background: Background
    close_after: int = 3
    sessions: dict[str, int] = field(default_factory=dict)

    @property
    def who(self) -> str:
        return f"agent at {self.config.id}"

    async def handle(self, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
        if not bearer_ok(request, self.config.access_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        event = str(body.get("Event", ""))
        cid = str(body.get("Conversationid", ""))
        if event == "Handover":
            self.sessions[cid] = 0
            self.printer.line(self.who, f"<- handover {short(cid)} ({body.get('Channel')})")
            self.background.run(
                self.who, self._say(cid, "Hi, I am Alex, an agent. How can I help?")
            )
        elif event == "Close":
            self.sessions.pop(cid, None)
            self.printer.line(self.who, f"<- {short(cid)}: closed by the router")
        elif cid in self.sessions:
            text = str(body.get("Message", ""))
            self.printer.line(self.who, f"<- {short(cid)}: {text}")
            self.sessions[cid] += 1
            if self.sessions[cid] >= self.close_after:
                del self.sessions[cid]
                self.background.run(self.who, self._close(cid))
            else:
                self.background.run(self.who, self._say(cid, f'Noted: "{text}".'))
        return web.json_response(OK)

    async def _say(self, cid: str, text: str) -> None:
        await self._send({"Event": "Agent message", "Conversationid": cid, "Message": text})
        self.printer.line(self.who, f"-> {short(cid)}: {text}")

    async def _close(self, cid: str) -> None:
        await self._say(cid, "Glad I could help. Handing you back to the bot.")
        await self._send({"Event": "Close", "Conversationid": cid})
        self.printer.line(self.who, f"-> {short(cid)}: closed the session")

    async def _send(self, body: dict[str, Any]) -> None:
        url = await self.link.webhook("ccsp", self.config.id, self.config.webhook_token)
        await self.link.post(url, body)


@dataclass
class ExampleChannel:
    """Prints what the customer would see on their phone. Assets may share one adapter, so
    the token presented tells which asset is sending."""

    assets: list[AssetConfig]
    printer: Printer

    async def handle(self, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
        asset = next((a for a in self.assets if bearer_ok(request, a.token)), None)
        if asset is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        self.printer.line(f"{asset.channel} to {body.get('Userid')}", str(body.get("Message", "")))
        return web.json_response(OK)


@dataclass
class ExampleFlow:
    config: FlowConfig
    printer: Printer

    async def handle(self, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
        self.printer.line(
            f"flow {self.config.id}", f"{body.get('Event')} in {short(body.get('Conversationid'))}"
        )
        return web.json_response(OK)


def example_routes(
    config: Config, link: RouterLink, printer: Printer, background: Background, close_after: int
) -> list[Route]:
    routes: list[Route] = []
    for bot in config.integrations:
        routes.append(Route(bot.url, ExampleBot(bot, link, printer, background).handle))
    for ccsp in config.ccsps:
        agent = ExampleAgent(ccsp, link, printer, background, close_after)
        routes.append(Route(ccsp.url, agent.handle))
    for flow in config.flows:
        routes.append(Route(flow.url, ExampleFlow(flow, printer).handle))
    adapters: dict[str, list[AssetConfig]] = {}
    for asset in config.assets:
        adapters.setdefault(asset.outbound_url, []).append(asset)
    for url, assets in adapters.items():
        routes.append(Route(url, ExampleChannel(assets, printer).handle))
    return routes
