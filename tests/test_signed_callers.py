"""Signed callers: a bot or CCSP with `signed_calls` must sign each call (Standard Webhooks)
besides presenting its webhook token; a repeat of an accepted call is a duplicate."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from router.cli import main
from tests.conftest import Daemon, Peers, StartRouter, base_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def signed(
    body: dict[str, Any], webhook_id: str, *, at: float | None = None, secret: str = SECRET
) -> tuple[bytes, dict[str, str]]:
    raw = orjson.dumps(body)
    seconds = int(time.time() if at is None else at)
    signature = Webhook(secret).sign(
        webhook_id, datetime.fromtimestamp(seconds, tz=UTC), raw.decode()
    )
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }
    return raw, headers


async def call(daemon: Daemon, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with daemon.session.post(daemon.public + path, data=raw, headers=headers) as answer:
        return answer.status, await answer.json()


def config(peers: Peers, store: Path) -> dict[str, Any]:
    raw = base_config(peers, store)
    raw["integrations"][0] |= {"signing_secret": SECRET, "signed_calls": True}
    raw["ccsp"][0] |= {"signing_secret": SECRET, "signed_calls": True}
    return raw


BOT = "/v1/bots/support-bot/bot-hook"
CCSP = "/v1/ccsp/agents/ccsp-hook"


async def conversation(daemon: Daemon, peers: Peers) -> str:
    await daemon.customer("hi", "m1")
    [first] = await peers.bot.wait_for(1)
    return str(first["Conversationid"])


async def test_a_bot_that_must_sign_is_refused_unsigned_forged_or_late(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_router(config=config(peers, tmp_path / "router.db"))
    cid = await conversation(daemon, peers)
    reply = {"eventid": "1001", "conversation_id": cid, "message": "hello"}
    status, answer = await daemon.bot(reply)  # the token alone
    assert (status, answer["error"]) == (401, "invalid_signature")
    raw, headers = signed(reply, "msg_1")
    forged = {**headers, "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
    status, answer = await call(daemon, BOT, raw, forged)
    assert (status, answer["error"]) == (401, "invalid_signature")
    status, answer = await call(daemon, BOT, raw.replace(b"hello", b"HELLO"), headers)
    assert (status, answer["error"]) == (401, "invalid_signature")  # the body was changed
    late_raw, late = signed(reply, "msg_2", at=time.time() - 360)
    status, answer = await call(daemon, BOT, late_raw, late)
    assert (status, answer["error"]) == (401, "invalid_signature")
    assert "5 minutes" in answer["message"]
    status, answer = await call(daemon, BOT, raw, headers)
    assert status == 202 and answer["accepted"] is True
    await peers.channel.wait_for(1)


async def test_an_accepted_signed_call_sent_again_is_a_duplicate_even_after_a_restart(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    raw_config = config(peers, tmp_path / "router.db")
    daemon = await start_router(config=raw_config)
    cid = await conversation(daemon, peers)
    raw, headers = signed({"Event": "Close", "conversation_id": cid}, "msg_close")
    assert (await call(daemon, BOT, raw, headers))[0] == 202

    async def closed() -> bool:
        return (await daemon.conversation(cid))["status"] == "closed"

    await daemon.until(closed)
    # The conversation is closed now, yet the same call again is its duplicate, not a 409.
    assert await call(daemon, BOT, raw, headers) == (200, {"accepted": True, "duplicate": True})
    await daemon.router.stop()
    again = await start_router(config=raw_config)
    assert await call(again, BOT, raw, headers) == (200, {"accepted": True, "duplicate": True})


async def test_a_ccsp_that_must_sign_is_checked_the_same_way(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_router(config=config(peers, tmp_path / "router.db"))
    cid = await conversation(daemon, peers)
    raw, headers = signed({"Event": "Handover", "conversation_id": cid}, "msg_h")
    assert (await call(daemon, BOT, raw, headers))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    message = {
        "Event": "Agent message",
        "Conversationid": handover["Conversationid"],
        "Message": "hello from an agent",
    }
    status, answer = await daemon.agent(message)
    assert (status, answer["error"]) == (401, "invalid_signature")
    raw, headers = signed(message, "msg_a1")
    assert (await call(daemon, CCSP, raw, headers))[0] == 202
    assert await call(daemon, CCSP, raw, headers) == (200, {"accepted": True, "duplicate": True})
    await peers.channel.wait_for(1)
    assert [b["Message"] for b in peers.channel.bodies] == ["hello from an agent"]


def test_signed_calls_without_a_secret_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        f"""
[admin]
token = "a"
[store]
path = "{tmp_path / "r.db"}"
[[integrations]]
id = "b"
name = "B"
url = "http://127.0.0.1:9/b"
access_token = "t"
signed_calls = true
"""
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "integrations[0].signed_calls" in err and "signing_secret" in err
