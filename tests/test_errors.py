"""Bad input gets a clear 4xx JSON error, never a 500, and the daemon stays healthy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ASSET_TOKEN, Daemon, Peers

EVENTS = "/v1/channels/fb-page-1/events"


async def assert_error(result: tuple[int, Any], status: int, code: str) -> None:
    got_status, body = result
    assert got_status == status, body
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in body["message"]


async def bot_conversation(daemon: Daemon, peers: Peers) -> str:
    await daemon.customer("hi", "m-setup")
    [first] = await peers.bot.wait_for(1)
    return str(first["Conversationid"])


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'"text"', "invalid_request"),
        (b'{"Event": "Incoming message"}', "invalid_request"),
        (b'{"Event": "Dance", "Userid": "u", "Messageid": "m"}', "invalid_request"),
        (b'{"Event": "Incoming message", "Userid": "u", "Message": "x"}', "invalid_request"),
        (
            b'{"Event": "Incoming message", "Userid": "", "Message": "x", "Messageid": "1"}',
            "invalid_request",
        ),
        (
            b'{"Event": "Incoming message", "Userid": {"a": 1}, "Message": "x", "Messageid": "1"}',
            "invalid_request",
        ),
        (b'{"Event": "FB POSTBACK", "Userid": "u", "Messageid": "1"}', "invalid_request"),
        (
            b'{"Event": "Message Delivery", "Userid": "u", "Messageid": "1"}',
            "invalid_delivery_status",
        ),
        (b"\xff\xfe", "invalid_json"),
    ],
)
async def test_malformed_channel_events_are_400(daemon: Daemon, raw: bytes, code: str) -> None:
    await assert_error(await daemon.post(EVENTS, None, ASSET_TOKEN, raw=raw), 400, code)


async def test_channel_tokens_and_assets(daemon: Daemon) -> None:
    body = {"Event": "Incoming message", "Userid": "u", "Message": "x", "Messageid": "1"}
    await assert_error(await daemon.post(EVENTS, body), 401, "unauthorized")
    await assert_error(await daemon.post(EVENTS, body, "wrong"), 401, "unauthorized")
    # An unknown asset answers exactly like a wrong token: ids cannot be probed for.
    wrong = await daemon.post(EVENTS, body, "wrong")
    assert await daemon.post("/v1/channels/nope/events", body, ASSET_TOKEN) == wrong


async def test_body_over_the_limit_is_413(daemon: Daemon) -> None:
    body = {"Event": "Incoming message", "Userid": "u", "Message": "x" * 10_000, "Messageid": "1"}
    await assert_error(await daemon.post(EVENTS, body, ASSET_TOKEN), 413, "body_too_large")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"eventid": "1003", "conversation_id": "c"},
        {"eventid": "1001"},
        {"eventid": "1001", "conversation_id": "c"},
        {"Event": "Party", "conversation_id": "c"},
        {"Event": "Close"},
        {"eventid": ["1001"], "conversation_id": "c", "message": "x"},
    ],
)
async def test_malformed_bot_events_are_400(daemon: Daemon, body: dict[str, Any]) -> None:
    await assert_error(await daemon.bot(body), 400, "invalid_request")


async def test_bot_webhook_errors(daemon: Daemon, peers: Peers) -> None:
    reply = {"eventid": "1001", "conversation_id": "nope", "message": "x"}
    wrong = await daemon.bot(reply, token="wrong")
    await assert_error(wrong, 401, "unauthorized")
    assert await daemon.bot(reply, integration="ghost") == wrong
    await assert_error(await daemon.bot(reply), 404, "unknown_conversation")
    conversation_id = await bot_conversation(daemon, peers)
    status, other = await daemon.admin(
        "POST",
        "/v1/admin/integrations",
        {"name": "Other", "url": peers.bot.url, "access_token": "t"},
    )
    assert status == 201
    token = other["webhook_url"].rsplit("/", 1)[1]
    await assert_error(
        await daemon.bot({**reply, "conversation_id": conversation_id}, other["id"], token),
        409,
        "not_owner",
    )


async def test_ccsp_webhook_errors(daemon: Daemon, peers: Peers) -> None:
    message = {"Event": "Agent message", "Conversationid": "nope", "Message": "x"}
    wrong = await daemon.agent(message, token="wrong")
    await assert_error(wrong, 401, "unauthorized")
    assert await daemon.post("/v1/ccsp/ghost/t", message) == wrong
    await assert_error(await daemon.agent(message), 404, "unknown_conversation")
    await assert_error(
        await daemon.agent({"Event": "Wave", "Conversationid": "x"}), 400, "invalid_request"
    )
    await assert_error(await daemon.agent({"Event": "Close"}), 400, "invalid_request")


async def test_admin_errors(daemon: Daemon) -> None:
    await assert_error(
        await daemon.admin("GET", "/v1/admin/integrations", token="bad"), 401, "unauthorized"
    )
    await assert_error(
        await daemon.admin("GET", "/v1/admin/integrations/ghost"), 404, "unknown_integration"
    )
    await assert_error(await daemon.admin("GET", "/v1/admin/ccsp/ghost"), 404, "unknown_ccsp")
    await assert_error(
        await daemon.admin("POST", "/v1/admin/integrations", {"name": "x"}), 400, "invalid_request"
    )
    await assert_error(
        await daemon.admin(
            "POST", "/v1/admin/integrations", {"name": "x", "url": "ftp://x", "access_token": "t"}
        ),
        400,
        "invalid_request",
    )
    await assert_error(
        await daemon.admin(
            "POST",
            "/v1/admin/integrations",
            {"name": "x", "url": "http://x", "access_token": "t", "colour": "red"},
        ),
        400,
        "invalid_request",
    )
    await assert_error(
        await daemon.admin("PATCH", "/v1/admin/integrations/support-bot", {}),
        400,
        "invalid_request",
    )
    await assert_error(
        await daemon.admin("PATCH", "/v1/admin/integrations/support-bot", [1]),
        400,
        "invalid_request",
    )
    await assert_error(
        await daemon.admin("POST", "/v1/admin/dead-letters/abc/replay"), 400, "invalid_request"
    )


async def test_unknown_paths_and_methods_are_json(daemon: Daemon) -> None:
    async with daemon.session.get(daemon.public + "/nowhere") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    async with daemon.session.get(daemon.public + EVENTS) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"] == "method_not_allowed"


async def test_debug_errors(daemon: Daemon) -> None:
    status, body = await daemon.get_debug("/debug/conversations/nope")
    assert (status, body["error"]) == (404, "unknown_conversation")
    for query in ("limit=0", "limit=abc", "limit=100000"):
        status, body = await daemon.get_debug(f"/debug/conversations?{query}")
        assert (status, body["error"]) == (400, "invalid_request")


async def test_daemon_stays_healthy_after_bad_input(daemon: Daemon, peers: Peers) -> None:
    for raw in (b"\x00" * 100, b"{" * 3000, b'{"Event": null}', b"null", b"1e999999"):
        status, _ = await daemon.post(EVENTS, None, ASSET_TOKEN, raw=raw)
        assert 400 <= status < 500
    assert await daemon.get_debug("/healthz") == (200, {"status": "ok"})
    assert (await daemon.customer("still fine", "ok-1"))[0] == 202
    await peers.bot.wait_for(1)
    _, metrics = await daemon.get_debug("/metrics")
    assert 'router_http_errors_total{status="400"} 5.0' in metrics
    assert 'status="500"' not in metrics
