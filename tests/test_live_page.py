"""The live page in a real headless browser: what it shows, read from the rendered DOM."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.http.debug import PAGE
from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no chromium here (.ci/run installs it)", allow_module_level=True)


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return " ".join(
            " ".join(c.split()) if isinstance(c, str) else c.text() for c in self.children
        ).strip()

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, (tag, attrs)
        return found[0]

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        found: list[Node] = []
        for child in self.children:
            if isinstance(child, Node):
                if (tag is None or child.tag == tag) and all(
                    child.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()
                ):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    @property
    def shown(self) -> bool:
        return "hidden" not in self.attrs

    def rows(self) -> list[list[str]]:
        return [[td.text() for td in tr.find_all("td")] for tr in self.find("tbody").find_all("tr")]


class Dom(HTMLParser):
    VOID = frozenset({"meta", "input", "br", "hr", "img", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if self.stack[-1].tag not in ("script", "style"):
            self.stack[-1].children.append(data)


async def render(url: str) -> Node:
    """The DOM after the page's scripts ran and fetched their views."""
    assert CHROMIUM is not None, "chromium is needed: apt-get install -y chromium"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    dom = Dom()
    dom.feed(out.decode())
    return dom.root


def cards(node: Node) -> dict[str, str]:
    """A card shows its value in bold over its label."""
    return {c.find_all("span")[0].text(): c.find_all("b")[0].text() for c in node.find_all("div")}


async def test_the_page_shows_health_runtime_integrations_and_conversations(
    daemon: Daemon, peers: Peers
) -> None:
    await daemon.customer("hi", "m1", user="alice")
    await daemon.customer("hi", "m2", user="bob")

    async def delivered() -> bool:
        return len(peers.bot.received) == 2

    await daemon.until(delivered)
    page = await render(f"{daemon.debug}/debug/")
    assert page.find(id="health").text() == "ok"
    assert page.find(id="error").text() == ""
    assert not page.find(id="login").shown
    runtime = cards(page.find(id="runtime"))
    assert runtime["conversations resident"] == "2"
    assert runtime["conversations passivated"] == "0"
    [bot] = page.find(id="integrations").rows()
    assert bot[:4] == ["support-bot", "Support bot", "active", "0"]
    users = sorted(row[1] for row in page.find(id="conversations").rows())
    assert users == ["alice", "bob"]
    assert not page.find(id="conversation").shown  # none picked yet


async def test_the_page_shows_one_conversation_and_filters_by_user(
    daemon: Daemon, peers: Peers
) -> None:
    await daemon.customer("hi", "m1", user="alice")
    await daemon.customer("hi", "m2", user="bob")

    async def delivered() -> bool:
        return len(peers.bot.received) == 2

    await daemon.until(delivered)
    cid = next(b["Conversationid"] for b in peers.bot.bodies)
    page = await render(f"{daemon.debug}/debug/#conversation={cid}")
    section = page.find(id="conversation")
    assert section.shown
    assert page.find(id="c-id").text() == cid
    shown = cards(page.find(id="c-cards"))
    assert shown["route"] == "bot" and shown["status"] == "open" and shown["bot"] == "support-bot"
    assert shown["resident"] == "yes"
    events = [row[1] for row in page.find(id="c-events").rows()]
    assert "CustomerEvent" in events and "DeliveryOutcome" in events
    assert '"lanes"' in page.find(id="c-live").text()

    page = await render(f"{daemon.debug}/debug/#user=bob")
    assert [row[1] for row in page.find(id="conversations").rows()] == ["bob"]
    page = await render(f"{daemon.debug}/debug/#status=closed")
    assert page.find(id="conversations").rows() == []
    page = await render(f"{daemon.debug}/debug/#route=bot&integration=support-bot&status=open")
    assert sorted(row[1] for row in page.find(id="conversations").rows()) == ["alice", "bob"]


async def test_the_page_shows_deliveries_owed_and_agent_sessions(
    start_router: StartRouter, peers: Peers
) -> None:
    daemon = await start_router(clock=ManualClock(), retry_delays_s=[60, 300, 900, 2340])
    await daemon.customer("hi", "m1")

    async def delivered() -> bool:
        return len(peers.bot.received) == 1

    await daemon.until(delivered)
    cid = peers.bot.bodies[0]["Conversationid"]
    peers.ccsp.script = [503]  # the Handover waits for its retry
    assert (await daemon.bot({"Event": "Handover", "conversation_id": cid}))[0] == 202

    async def retrying() -> bool:
        owed = (await daemon.conversation(cid))["deliveries"]
        return any(d["status"] == "retrying" for d in owed)

    await daemon.until(retrying)
    page = await render(f"{daemon.debug}/debug/#conversation={cid}")
    [owed] = page.find(id="c-deliveries").rows()
    assert owed[1:5] == ["ccsp:agents", "retrying", "1", owed[4]] and owed[5] == "HTTP 503"
    [session] = page.find(id="c-sessions").rows()
    assert session[1:3] == ["agents", "open"]
    assert cards(page.find(id="c-cards"))["route"] == "ccsp"


async def test_a_long_list_of_conversations_offers_the_next_page(
    daemon: Daemon, peers: Peers
) -> None:
    for n in range(51):
        await daemon.customer("hi", f"m{n}", user=f"u{n:02}")

    async def delivered() -> bool:
        return len(peers.bot.received) == 51

    await daemon.until(delivered)
    page = await render(f"{daemon.debug}/debug/")
    assert len(page.find(id="conversations").rows()) == 50
    assert page.find(id="more").shown


async def test_a_debug_port_that_wants_a_token_makes_the_page_ask_for_it(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html")

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "unauthorized", "message": "token"}, status=401)

    app = web.Application()
    app.router.add_get("/debug/", html)
    app.router.add_get("/{tail:.*}", refuse)
    server = await aiohttp_server(app)
    page = await render(str(server.make_url("/debug/")))
    assert page.find(id="login").shown
    assert page.find(id="error").text() == "the debug port asks for its token"
