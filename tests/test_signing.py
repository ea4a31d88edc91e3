"""Signed deliveries (Standard Webhooks): every outbound call carries its delivery's id and
the time of the attempt, and, for a destination with a signing secret, a signature that the
reference verifier accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from router.cli import main
from router.io.signing import webhook_headers
from tests.clock import ManualClock
from tests.conftest import Daemon, Peers, StartRouter, base_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXkgb2YgMzIgYnk="
DELAYS = [60, 300, 900, 2340]


def test_the_signer_passes_the_specifications_published_vector() -> None:
    headers = webhook_headers(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}', SECRET
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def signed_config(peers: Peers, store: Path, **delivery: Any) -> dict[str, Any]:
    raw = base_config(peers, store, **delivery)
    raw["integrations"][0]["signing_secret"] = SECRET
    raw["ccsp"][0]["signing_secret"] = OTHER
    raw["assets"][0]["signing_secret"] = OTHER
    return raw


def verify(secret: str, tried: Any) -> Any:
    """The reference library's verifier, on the bytes and headers as they arrived."""
    return Webhook(secret).verify(tried.raw, tried.headers)


async def test_deliveries_to_every_kind_of_destination_are_signed_with_its_secret(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    daemon = await start_router(config=signed_config(peers, tmp_path / "router.db"))
    await daemon.customer("hi", "m1")
    [to_bot] = await peers.bot.wait_for(1)
    assert verify(SECRET, peers.bot.received[0]) == to_bot
    cid = to_bot["Conversationid"]
    assert (await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "yo"}))[0]
    await peers.channel.wait_for(1)
    assert verify(OTHER, peers.channel.received[0])["Message"] == "yo"
    assert (await daemon.bot({"Event": "Handover", "conversation_id": cid}))[0] == 202
    await peers.ccsp.wait_for(1)
    assert verify(OTHER, peers.ccsp.received[0])["Event"] == "Handover"
    # The flow has no secret: its calls carry the id and the time, and no signature.
    await peers.flow.wait_for(1)
    flow = peers.flow.received[0].headers
    assert flow["webhook-id"].startswith("msg_") and flow["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in flow
    ids = [
        r.headers["webhook-id"]
        for p in (peers.bot, peers.channel, peers.ccsp, peers.flow)
        for r in p.received
    ]
    assert len(set(ids)) == len(ids)  # one id per delivery


async def test_a_deliverys_id_stays_across_retries_while_its_time_moves_on(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    raw = signed_config(peers, tmp_path / "router.db", retry_delays_s=DELAYS)
    daemon = await start_router(config=raw, clock=clock)
    peers.bot.script = [500]
    await daemon.customer("hi", "m1")

    async def retrying() -> bool:
        return clock.pending() == [60.0]

    await daemon.until(retrying)
    clock.advance(60)
    await peers.bot.wait_for(1)
    first, second = peers.bot.tried
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 60
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]


async def test_a_replayed_dead_letter_and_a_released_parked_delivery_keep_their_id(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    raw = signed_config(peers, tmp_path / "router.db", inactive_after_failures=50)
    daemon = await start_router(config=raw)  # retries 50 ms apart
    peers.bot.script = [500] * 5
    await daemon.customer("hi", "m1")
    _, dead = await daemon.until_dead_letters(1)
    [letter] = dead["dead_letters"]
    status, _ = await daemon.admin("POST", f"/v1/admin/dead-letters/{letter['delivery_id']}/replay")
    assert status == 202
    await peers.bot.wait_for(1)
    assert len({t.headers["webhook-id"] for t in peers.bot.tried}) == 1
    assert len(peers.bot.tried) == 6


async def test_a_delivery_parked_while_its_bot_was_out_keeps_its_id_when_released(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    raw = signed_config(peers, tmp_path / "router.db", inactive_after_failures=1)
    daemon = await start_router(config=raw)
    peers.bot.script = [503]
    await daemon.customer("hi", "m1")

    async def parked() -> bool:
        _, items = await daemon.get_debug("/debug/integrations")
        return bool(items[0]["parked"])

    await daemon.until(parked)
    status, _ = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
    assert status == 200
    await peers.bot.wait_for(1)
    challenge = peers.bot.verified[-1]
    assert verify(SECRET, challenge)["Event"] == "Verify"  # the challenge is signed too
    failed, delivered = peers.bot.tried
    assert failed.headers["webhook-id"] == delivered.headers["webhook-id"]
    assert verify(SECRET, delivered)["Message"] == "hi"


async def test_a_bot_created_over_the_api_signs_with_its_secret_which_is_never_shown(
    daemon: Daemon, peers: Peers
) -> None:
    body = {"name": "B2", "url": peers.flow.url, "access_token": "t", "signing_secret": SECRET}
    status, created = await daemon.admin("POST", "/v1/admin/integrations", body)
    assert status == 201 and "signing_secret" not in created and SECRET not in str(created)
    status, listed = await daemon.admin("GET", "/v1/admin/integrations")
    assert SECRET not in str(listed)
    _, debug = await daemon.get_debug("/debug/integrations")
    assert SECRET not in str(debug)
    status, bad = await daemon.admin(
        "PATCH", f"/v1/admin/integrations/{created['id']}", {"signing_secret": "plain"}
    )
    assert (status, bad["error"]) == (400, "invalid_request") and "whsec_" in bad["message"]
    status, _ = await daemon.admin(
        "PATCH", f"/v1/admin/integrations/{created['id']}", {"signing_secret": None}
    )
    assert status == 200


@pytest.mark.parametrize(
    ("secret", "reason"),
    [("abc", "must start with 'whsec_'"), ("whsec_!!!", "base64"), ("whsec_YWJj", "24 bytes")],
)
def test_a_file_with_an_unusable_secret_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], secret: str, reason: str
) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        f"""
[admin]
token = "a"
[store]
path = "{tmp_path / "r.db"}"
[[flows]]
id = "f"
url = "http://127.0.0.1:9/f"
signing_secret = "{secret}"
"""
    )
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "flows[0].signing_secret" in err and reason in err
