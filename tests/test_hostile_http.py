"""Hostile or broken HTTP on both sides: redirecting peers, undecodable headers, deep JSON,
malformed requests, bad admin input. Every answer is a JSON error; no secret reaches a log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from router.http.util import MAX_JSON_DEPTH, json_depth, redact_path
from router.io.edge import _safe_error
from tests.conftest import ASSET_TOKEN, Daemon, Peers, StartRouter, base_config

EVENTS = "/v1/channels/fb-page-1/events"
MakeServer = Callable[..., Awaitable[TestServer]]


# -- peers that redirect, and a trap that must never be reached ---------------------------


@dataclass
class Hit:
    method: str
    path: str
    authorization: str | None


@dataclass
class Trap:
    """Records every request of any method; a redirect followed would land here."""

    hits: list[Hit] = field(default_factory=list)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits.append(Hit(request.method, request.path, request.headers.get("Authorization")))
        return web.json_response({"challenge": "anything", "ok": True})


@dataclass
class Redirector(Trap):
    """Answers everything with `status` and a Location pointing at the trap."""

    status: int = 301
    target: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits.append(Hit(request.method, request.path, request.headers.get("Authorization")))
        return web.Response(status=self.status, headers={"Location": self.target})


async def serve(make_server: MakeServer, peer: Trap, path: str) -> None:
    server = await make_server(peer.app())
    peer.url = str(server.make_url(path))


# -- raw HTTP over a socket -----------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(port: int, data: bytes) -> RawAnswer:
    """Send bytes as they are and read the answer up to the server closing the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, body)


# -- 9: redirects are failed attempts, and attempt errors carry no secrets --------------------


def redirect_to(config: dict[str, Any], kind: str, url: str) -> None:
    if kind == "bot":
        config["integrations"][0]["url"] = url
    elif kind == "ccsp":
        config["ccsp"][0]["url"] = url
    elif kind == "flow":
        config["flows"][0]["url"] = url
    else:
        for asset in config["assets"]:
            asset["outbound_url"] = url


async def provoke(kind: str, daemon: Daemon, peers: Peers) -> None:
    """Make the router send exactly one message to a destination of `kind`."""
    if kind == "bot":
        assert (await daemon.customer("hello", "m1", asset="sms-1"))[0] == 202
    elif kind == "flow":
        assert (await daemon.customer("hello", "m1", asset="wa-1"))[0] == 202
    elif kind == "channel":
        await daemon.customer("hello", "m1", asset="sms-1")
        [first] = await peers.bot.wait_for(1)
        reply = {"eventid": "1001", "conversation_id": first["Conversationid"], "message": "hi"}
        assert (await daemon.bot(reply))[0] == 202
    else:
        await daemon.customer("hello", "m1")
        [first] = await peers.bot.wait_for(1)
        handover = {"eventid": "1002", "conversation_id": first["Conversationid"]}
        assert (await daemon.bot(handover))[0] == 202


DESTINATIONS = {"bot": "bot:support-bot", "ccsp": "ccsp:agents", "flow": "flow:crm"}


@pytest.mark.parametrize("status", [301, 307])
@pytest.mark.parametrize("kind", ["bot", "ccsp", "channel", "flow"])
async def test_a_redirect_is_a_failed_attempt_and_is_never_followed(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    aiohttp_server: MakeServer,
    kind: str,
    status: int,
) -> None:
    trap = Trap()
    await serve(aiohttp_server, trap, "/elsewhere")
    redirector = Redirector(status=status, target=trap.url)
    await serve(aiohttp_server, redirector, f"/{kind}")
    config = base_config(peers, tmp_path / "router.db", inactive_after_failures=50)
    redirect_to(config, kind, redirector.url)
    daemon = await start_router(config)
    await provoke(kind, daemon, peers)
    _, dead = await daemon.until_dead_letters(1)
    [letter] = dead["dead_letters"]
    assert letter["destination"] == DESTINATIONS.get(kind, "channel:sms-1")
    assert letter["attempt"] == 5  # the first attempt and the four configured retries
    assert letter["last_error"] == f"HTTP {status}"
    assert [h.method for h in redirector.hits] == ["POST"] * 5
    assert trap.hits == []


async def test_verify_does_not_follow_a_redirect(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: MakeServer
) -> None:
    trap = Trap()
    await serve(aiohttp_server, trap, "/elsewhere")
    redirector = Redirector(status=307, target=trap.url)
    await serve(aiohttp_server, redirector, "/bot")
    config = base_config(peers, tmp_path / "router.db")
    redirect_to(config, "bot", redirector.url)
    daemon = await start_router(config)
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert (status, body) == (
        422,
        {"error": "verification_failed", "message": "webhook verification failed: HTTP 307"},
    )
    assert [h.authorization for h in redirector.hits] == ["Bearer bot-secret"]
    assert trap.hits == []


async def test_an_attempt_error_keeps_no_credentials_from_the_url(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db", inactive_after_failures=50)
    with socket.socket() as probe:  # a port nobody listens on: every attempt is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config["flows"][0]["url"] = f"http://user:hunter2@127.0.0.1:{port}/hook?key=sekrit"
    daemon = await start_router(config)
    with capture_logs() as logs:
        await daemon.customer("hello", "m1", asset="wa-1")
        _, dead = await daemon.until_dead_letters(1)
    [letter] = dead["dead_letters"]
    assert letter["last_error"].startswith("CannotConnect: ")
    assert f"127.0.0.1:{port}" in letter["last_error"]
    assert "hunter2" not in letter["last_error"] and "sekrit" not in letter["last_error"]
    failures = [e for e in logs if e["event"] == "delivery_attempt_failed"]
    assert len(failures) == 5
    assert all(e["error"] == letter["last_error"] for e in failures)
    assert "hunter2" not in repr(logs) and "sekrit" not in repr(logs)


def test_attempt_errors_are_scrubbed_of_urls_secrets_and_the_token() -> None:
    url = "https://bot:pa%24s@bot.example:8443/hook?key=k3y#frag"
    exc = aiohttp.ClientError(
        "failed https://bot:pa%24s@bot.example:8443/hook?key=k3y#frag "
        "with Authorization: Bearer tok-123456 and pa$s, k3y"
    )
    assert _safe_error(exc, url, "tok-123456") == (
        "ClientError: failed https://bot.example:8443/hook "
        "with Authorization: Bearer *** and ***, ***"
    )


# -- 10: undecodable Authorization, deep JSON, webhook tokens out of logs ---------------------


@pytest.mark.parametrize(
    "request_line",
    [b"POST /v1/channels/fb-page-1/events HTTP/1.1", b"GET /v1/admin/integrations HTTP/1.1"],
)
async def test_an_authorization_header_that_is_not_utf8_is_401(
    daemon: Daemon, request_line: bytes
) -> None:
    body = b'{"Event":"Incoming message","Userid":"u","Message":"x","Messageid":"1"}'
    answer = await raw_request(
        daemon.router.public_port,
        request_line + b"\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
    )
    assert answer.status == 401
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == (
        b'{"error":"unauthorized","message":"a valid Authorization: Bearer token is required"}'
    )


def nested(depth: int, kind: str = "list") -> Any:
    """A value whose arrays or objects nest exactly `depth` deep."""
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


def test_json_depth_counts_containers_without_recursion() -> None:
    depths = {'"x"': 0, "1": 0, "null": 0, "[]": 1, "{}": 1, "[[]]": 2, '{"a": [{}, 1]}': 3}
    assert {text: json_depth(orjson.loads(text)) for text in depths} == depths
    assert json_depth(nested(100_000)) > MAX_JSON_DEPTH  # far past the recursion limit
    assert json_depth(nested(MAX_JSON_DEPTH, "dict")) == MAX_JSON_DEPTH


TOO_DEEP = {
    "error": "invalid_json",
    "message": "the body nests arrays and objects deeper than the limit of 64",
}


@pytest.mark.parametrize("kind", ["list", "dict"])
async def test_json_deeper_than_64_is_400_and_64_is_accepted(daemon: Daemon, kind: str) -> None:
    # The event object is one level; its extra field holds the rest.
    accepted = {"Event": "Incoming message", "Userid": "u", "Message": "x", "Messageid": "d64"}
    accepted["Extra"] = nested(MAX_JSON_DEPTH - 1, kind)
    assert await daemon.post(EVENTS, accepted, ASSET_TOKEN) == (202, {"accepted": True})
    refused = {**accepted, "Messageid": "d65", "Extra": nested(MAX_JSON_DEPTH, kind)}
    assert await daemon.post(EVENTS, refused, ASSET_TOKEN) == (400, TOO_DEEP)
    assert await daemon.bot(nested(65, kind)) == (400, TOO_DEEP)
    assert await daemon.admin("POST", "/v1/admin/integrations", nested(65, kind)) == (
        400,
        TOO_DEEP,
    )


def test_webhook_tokens_are_redacted_from_logged_paths() -> None:
    assert redact_path("/v1/bots/support-bot/bot-hook") == "/v1/bots/support-bot/***"
    assert redact_path("/v1/ccsp/agents/ccsp-hook") == "/v1/ccsp/agents/***"
    assert redact_path("/v1/ccsp/agents/a/b/c") == "/v1/ccsp/agents/***"
    assert redact_path("/v1/channels/fb-page-1/events") == "/v1/channels/fb-page-1/events"
    assert redact_path("/v1/admin/integrations/x") == "/v1/admin/integrations/x"


INTERNAL = {"error": "internal_error", "message": "the request could not be handled"}


async def test_a_failed_webhook_request_logs_its_path_without_the_token(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any) -> None:
        raise RuntimeError("injected")

    assert daemon.router.intake is not None
    monkeypatch.setattr(daemon.router.intake, "check_bot", broken)
    monkeypatch.setattr(daemon.router.intake, "check_ccsp", broken)
    with capture_logs() as logs:
        reply = {"eventid": "1001", "conversation_id": "c", "message": "x"}
        assert await daemon.bot(reply) == (500, INTERNAL)
        close = {"Event": "Close", "Conversationid": "c"}
        assert await daemon.agent(close) == (500, INTERNAL)
    failed = [(e["event"], e["path"]) for e in logs if e["event"] == "request_failed"]
    assert failed == [
        ("request_failed", "/v1/bots/support-bot/***"),
        ("request_failed", "/v1/ccsp/agents/***"),
    ]
    assert "bot-hook" not in repr(logs) and "ccsp-hook" not in repr(logs)


# -- 11: errors of the HTTP layer itself are JSON, and no traceback is logged -----------------

MALFORMED = [
    (b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n", "Bad status line", "BadStatusLine"),
    (
        b"POST /v1/bots/support-bot/bot-hook HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
        "Invalid header token",
        "BadHttpMessage",
    ),
    (
        b"POST /v1/channels/fb-page-1/events HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
        "Invalid character in chunk size",
        "BadHttpMessage",
    ),
    (
        b"G=T /v1/bots/support-bot/bot-hook HTTP/1.1\r\nHost: x\r\n\r\n",
        "Invalid method encountered",
        "BadHttpMethod",
    ),
]


@pytest.mark.parametrize("port", ["public", "debug"])
@pytest.mark.parametrize(("raw", "reason", "error_type"), MALFORMED)
async def test_malformed_http_is_a_json_400_without_a_traceback(
    daemon: Daemon,
    caplog: pytest.LogCaptureFixture,
    port: str,
    raw: bytes,
    reason: str,
    error_type: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    number = daemon.router.public_port if port == "public" else daemon.router.debug_port
    with capture_logs() as logs:
        answer = await raw_request(number, raw)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == (
        b'{"error":"invalid_http","message":"the request is not valid HTTP: '
        + reason.encode()
        + b'"}'
    )
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    # One line naming the kind of mistake; never the request line, which may hold a token.
    assert logs == [
        {"event": "malformed_request", "status": 400, "log_level": "info", "reason": error_type}
    ]
    assert "bot-hook" not in repr(logs)
    # The daemon serves the next request as usual.
    assert await daemon.get_debug("/healthz") == (200, {"status": "ok"})


async def test_malformed_http_counts_as_a_400_on_the_public_port(daemon: Daemon) -> None:
    await raw_request(daemon.router.public_port, MALFORMED[0][0])
    _, metrics = await daemon.get_debug("/metrics")
    assert 'router_http_errors_total{status="400"} 1.0' in metrics


async def test_a_client_gone_mid_body_is_no_server_error(daemon: Daemon) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", daemon.router.public_port)
    with capture_logs() as logs:
        writer.write(
            b"POST /v1/channels/fb-page-1/events HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + ASSET_TOKEN.encode() + b"\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        server = daemon.router.public_runner.server if daemon.router.public_runner else None
        assert server is not None

        async def received() -> bool:
            return server.requests_count == 1

        await daemon.until(received)
        # The handler was scheduled with the request; one turn of the loop and it is
        # waiting for the rest of the body.
        await asyncio.sleep(0)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

        async def counted() -> bool:
            _, metrics = await daemon.get_debug("/metrics")
            return 'router_http_errors_total{status="400"}' in metrics

        await daemon.until(counted)
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    _, metrics = await daemon.get_debug("/metrics")
    assert 'status="500"' not in metrics


# -- 14: admin input ---------------------------------------------------------------------------

ID_RULE = "id must be 1 to 64 letters, digits, '.', '_' or '-', and not '.' or '..'"


async def create(daemon: Daemon, **fields: Any) -> tuple[int, Any]:
    body = {"name": "Bot", "url": "https://bot.example/hook", "access_token": "t", **fields}
    return await daemon.admin("POST", "/v1/admin/integrations", body)


@pytest.mark.parametrize(
    "item_id", [".", "..", "a/b", "a b", "x" * 65, "caf\u00e9", "a%2Fb", "a?b", "a:b", "~x"]
)
async def test_an_admin_id_outside_the_alphabet_is_400(daemon: Daemon, item_id: str) -> None:
    assert await create(daemon, id=item_id) == (
        400,
        {"error": "invalid_request", "message": ID_RULE},
    )


@pytest.mark.parametrize("item_id", ["a", "...", "A.b_c-1", "x" * 64])
async def test_an_admin_id_inside_the_alphabet_is_accepted(daemon: Daemon, item_id: str) -> None:
    status, created = await create(daemon, id=item_id)
    assert status == 201, created
    assert created["id"] == item_id
    assert created["webhook_url"].startswith(f"{daemon.public}/v1/bots/{item_id}/")
    assert await daemon.admin("GET", f"/v1/admin/integrations/{item_id}") == (200, created)


SCHEME = "url must be an http:// or https:// URL"
NO_HOST = "url must be absolute and name a host, e.g. https://bot.example/hook"
PORT = "url must have a port from 1 to 65535, if it has one"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://", NO_HOST),
        ("http:///x", NO_HOST),
        ("https:x", NO_HOST),
        ("https://:80/x", NO_HOST),
        ("ftp://h", SCHEME),
        ("//h/x", SCHEME),
        ("h/x", SCHEME),
        ("mailto:a@b", SCHEME),
        ("http://h x/", "url must not contain whitespace"),
        ("https://u:p@h/", "url must not carry user:password@; the access token authenticates"),
        ("http://h:99999/", PORT),
        ("http://h:port/", PORT),
        ("http://h:0/", PORT),
        ("http://[::1/", "url is not a valid URL: Invalid IPv6 URL"),
        (
            "http://a_b<>.com/x",
            "url names a host that is not a valid name or address: 'a_b<>.com'",
        ),
        ("http://-h-/x", "url names a host that is not a valid name or address: '-h-'"),
    ],
)
async def test_an_admin_url_must_be_absolute_http_with_a_host(
    daemon: Daemon, url: str, message: str
) -> None:
    expected = (400, {"error": "invalid_request", "message": message})
    assert await create(daemon, url=url) == expected
    assert (
        await daemon.admin("PATCH", "/v1/admin/integrations/support-bot", {"url": url}) == expected
    )


@pytest.mark.parametrize(
    "url",
    ["http://h", "https://H.example:8443/p?q=1", "http://[::1]:8/x", "http://bot_svc.local./x"],
)
async def test_an_admin_url_with_a_host_is_accepted(daemon: Daemon, url: str) -> None:
    status, created = await create(daemon, url=url)
    assert (status, created["url"]) == (201, url)


def odd_ids(peers: Peers, store: Path) -> dict[str, Any]:
    """A config whose ids and webhook tokens hold characters that need encoding in a URL."""
    config = base_config(peers, store)
    config["integrations"][0].update(id="support bot/\u00fc", webhook_token="hook?/1 #")
    config["ccsp"][0].update(id="agents%2F", webhook_token="t/k")
    for service in config["services"]:
        for rule in service["rules"]:
            if rule.get("bot") == "support-bot":
                rule["bot"] = "support bot/\u00fc"
            if rule.get("ccsp") == "agents":
                rule["ccsp"] = "agents%2F"
    return config


async def test_webhook_urls_for_config_ids_are_percent_encoded_and_work(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_router(odd_ids(peers, tmp_path / "router.db"))
    _, [bot] = await daemon.admin("GET", "/v1/admin/integrations")
    assert bot["webhook_url"] == f"{daemon.public}/v1/bots/support%20bot%2F%C3%BC/hook%3F%2F1%20%23"
    _, [ccsp] = await daemon.admin("GET", "/v1/admin/ccsp")
    assert ccsp["webhook_url"] == f"{daemon.public}/v1/ccsp/agents%252F/t%2Fk"
    # Posting to the URLs exactly as given reaches the right door with the right token.
    reply = {"eventid": "1001", "conversation_id": "nope", "message": "x"}
    agent = {"Event": "Agent message", "Conversationid": "nope", "Message": "x"}
    for url, body in ((bot["webhook_url"], reply), (ccsp["webhook_url"], agent)):
        async with daemon.session.post(yarl.URL(url, encoded=True), json=body) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "unknown_conversation"
    await daemon.customer("hello", "m1", asset="sms-1")
    [first] = await peers.bot.wait_for(1)
    reply["conversation_id"] = first["Conversationid"]
    async with daemon.session.post(yarl.URL(bot["webhook_url"], encoded=True), json=reply) as resp:
        status, answer = resp.status, await resp.json()
    assert (status, answer["accepted"]) == (202, True)
    [out] = await peers.channel.wait_for(1)
    assert out["Message"] == "x"


async def test_a_compressed_body_is_a_json_415_without_a_traceback(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    # Never inflated: refused from its headers, whether it would inflate or not.
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    body = b"\x1f\x8b\x08\x00garbage that is not deflate at all"
    answer = await raw_request(
        daemon.router.public_port,
        b"POST /v1/channels/fb-page-1/events HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + ASSET_TOKEN.encode() + b"\r\n"
        b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
    )
    assert answer.status == 415
    assert orjson.loads(answer.body)["error"] == "unsupported_encoding"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert await daemon.get_debug("/healthz") == (200, {"status": "ok"})
