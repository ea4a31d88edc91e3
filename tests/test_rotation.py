"""Secrets replaced without downtime: every kind of secret can be changed while its old value
stays good for an overlap (the admin API for a bot's, a reload for the rest), inbound and
outbound, across a restart, and no longer once the overlap ends."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from router.config.settings import ConfigError, parse_config
from router.domain.rotation import Overlaps, Retired, replaced
from tests.clock import ManualClock
from tests.conftest import ADMIN, ASSET_TOKEN, Daemon, Peers, StartRouter, base_config
from tests.peers import Peer, Received
from tests.test_reload import Reloader
from tests.test_signed_callers import signed

OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXkgb2YgMzIgYnk="
HOUR = 3600.0

# -- the pure part -------------------------------------------------------------------------


def test_a_replaced_value_retires_for_the_overlap_and_a_first_or_removed_one_does_not() -> None:
    before = {("admin", ""): "a1", ("signing", "bot:b"): None, ("token", "flow:f"): "t"}
    after = {("admin", ""): "a2", ("signing", "bot:b"): OLD}
    assert replaced(before, after, 100.0, 60.0) == (Retired("admin", "", "a1", 160.0),)
    assert replaced(before, after, 100.0, 0.0) == ()
    cleared = replaced({("signing", "bot:b"): OLD}, {("signing", "bot:b"): None}, 0.0, 5.0)
    assert cleared == (Retired("signing", "bot:b", OLD, 5.0),)  # signing switched off


def test_overlaps_answer_current_first_then_retired_until_they_expire() -> None:
    overlaps = Overlaps([Retired("admin", "", "a1", 50.0), Retired("admin", "", "a0", 20.0)])
    assert overlaps.accepted("admin", "", "a2", 10.0) == ("a2", "a1", "a0")
    assert overlaps.accepted("admin", "", "a2", 20.0) == ("a2", "a1")
    assert overlaps.accepted("admin", "", "a2", 50.0) == ("a2",)
    overlaps.end("admin", "")
    assert overlaps.values("admin", "", 0.0) == ()
    overlaps.add(Retired("webhook", "bot:x", "w", 9.0))
    assert overlaps.owners_gone([("admin", "")]) == (("webhook", "bot:x"),)
    assert overlaps.rows(0.0) == ()


# -- peers that check what the router presents ------------------------------------------------


@dataclass
class Gatekeeper(Peer):
    """A peer that refuses (401) any bearer token but those it was told to accept."""

    accepts: set[str] = field(default_factory=set)
    refusal: int = 401

    async def handle(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given not in self.accepts:
            raw = await request.read()
            self.tried.append(Received(orjson.loads(raw), dict(request.headers), raw))
            return web.json_response({"error": "unauthorized"}, status=self.refusal)
        return await super().handle(request)


Serve = Callable[..., Awaitable[TestServer]]


async def gatekeeper(aiohttp_server: Serve, accepts: set[str]) -> Gatekeeper:
    peer = Gatekeeper("bot", accepts=accepts)
    server = await aiohttp_server(peer.app())
    peer.url = str(server.make_url("/bot"))
    return peer


def config(peers: Peers, store: Path, **admin: Any) -> dict[str, Any]:
    raw = base_config(peers, store)
    raw["admin"] |= {"secret_overlap_s": HOUR, **admin}
    return raw


async def start(
    start_router: StartRouter, raw: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> Reloader:
    daemon = await start_router(config=raw, clock=clock)
    return Reloader(daemon, raw, tmp_path / "router.toml")


async def managed(start_router: StartRouter, raw: dict[str, Any], clock: ManualClock) -> Daemon:
    """The file's bot as the admin API manages it: started from the file once, then from a
    file without it (its rules still name it), so that its secrets change over the API."""
    first = await start_router(config=raw, clock=clock)
    await first.router.stop()
    return await start_router(config={**raw, "integrations": []}, clock=clock)


async def conversation(daemon: Daemon, bot: Peer, message_id: str = "m1") -> str:
    await daemon.customer("hi", message_id)
    received = await bot.wait_for(1)
    return str(received[0]["Conversationid"])


# -- reloads: the admin token, an asset's token, a CCSP's secrets ---------------------------


async def test_a_reloaded_admin_token_leaves_the_old_one_good_until_the_overlap_ends_even_across_a_restart(  # noqa: E501
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    reloader = await start(start_router, config(peers, tmp_path / "r.db"), tmp_path, clock)
    raw = reloader.edited()
    raw["admin"]["token"] = "admin-2"
    assert await reloader.applied(raw) == {"admin": {"changed": ["token"]}}
    daemon = reloader.daemon
    for token in (ADMIN, "admin-2"):
        assert (await daemon.admin("GET", "/v1/admin/ccsp", token=token))[0] == 200
    status, listed = await daemon.admin("GET", "/v1/admin/secrets", token="admin-2")
    assert (status, listed) == (
        200,
        {"overlaps": [{"kind": "admin", "owner": "", "until": clock.now() + HOUR}]},
    )
    assert ADMIN not in str(listed)
    # The overlap is on disk: a restart within it keeps the old token good.
    await daemon.router.stop()
    clock.advance(HOUR - 1)
    again = await start_router(config=raw, clock=clock)
    assert (await again.admin("GET", "/v1/admin/ccsp", token=ADMIN))[0] == 200
    clock.advance(1)
    assert (await again.admin("GET", "/v1/admin/ccsp", token=ADMIN))[0] == 401
    assert (await again.admin("GET", "/v1/admin/ccsp", token="admin-2"))[0] == 200


async def test_a_reloaded_asset_token_is_accepted_both_ways_and_the_channel_is_asked_with_either(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: Serve
) -> None:
    clock = ManualClock()
    channel = await gatekeeper(aiohttp_server, {ASSET_TOKEN})  # has not changed over yet
    raw = config(peers, tmp_path / "r.db")
    raw["assets"][0]["outbound_url"] = channel.url
    reloader = await start(start_router, raw, tmp_path, clock)
    daemon = reloader.daemon
    raw = reloader.edited()
    raw["assets"][0]["token"] = "asset-2"
    await reloader.applied(raw)
    # Inbound: the channel may present either token.
    cid = await conversation(daemon, peers.bot)
    body = {"Event": "Incoming message", "Userid": "u1", "Message": "again", "Messageid": "m2"}
    assert (await daemon.post("/v1/channels/fb-page-1/events", body, "asset-2"))[0] == 202
    # Outbound: the new token first; refused, the old one, which the channel still takes.
    assert (await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "a"}))[0]
    [first] = await channel.wait_for(1)
    assert first["Message"] == "a"
    assert [t.headers["Authorization"] for t in channel.tried] == [
        "Bearer asset-2",
        f"Bearer {ASSET_TOKEN}",
    ]
    channel.accepts = {"asset-2"}  # the channel changes over
    assert (await daemon.bot({"eventid": "1001", "conversation_id": cid, "message": "b"}))[0]
    await channel.wait_for(2)
    assert channel.tried[-1].headers["Authorization"] == "Bearer asset-2"
    clock.advance(HOUR)
    assert (await daemon.customer("late", "m3"))[0] == 401  # the old token, past the overlap
    assert (
        await daemon.post("/v1/channels/fb-page-1/events", body | {"Messageid": "m4"}, "asset-2")
    )[0] == 202


# -- the admin API: a bot's access token, signing secret and webhook token ----------------


async def test_a_bots_new_access_token_falls_back_to_the_old_one_while_the_bot_has_not_changed_over(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: Serve
) -> None:
    clock = ManualClock()
    bot = await gatekeeper(aiohttp_server, {"bot-secret"})
    raw = config(peers, tmp_path / "r.db")
    raw["integrations"][0]["url"] = bot.url
    daemon = await managed(start_router, raw, clock)
    status, _ = await daemon.admin(
        "PATCH", "/v1/admin/integrations/support-bot", {"access_token": "bot-secret-2"}
    )
    assert status == 200
    await conversation(daemon, bot)
    assert [t.headers["Authorization"] for t in bot.tried] == [
        "Bearer bot-secret-2",
        "Bearer bot-secret",
    ]
    _, view = await daemon.admin("GET", "/v1/admin/integrations/support-bot")
    assert (view["state"], view["consecutive_failures"]) == ("active", 0)
    bot.accepts = {"bot-secret-2"}
    await daemon.customer("and now", "m2")
    await bot.wait_for(2)
    assert bot.tried[-1].headers["Authorization"] == "Bearer bot-secret-2"
    # Past the overlap the old token is not offered: a bot still on it fails as it would.
    clock.advance(HOUR)
    bot.accepts = {"bot-secret"}
    tried = len(bot.tried)
    await daemon.customer("late", "m3")
    await daemon.until(_attempted(bot, tried + 1))
    assert [t.headers["Authorization"] for t in bot.tried[tried:]] == ["Bearer bot-secret-2"]


def _attempted(peer: Peer, count: int) -> Callable[[], Awaitable[bool]]:
    async def enough() -> bool:
        return len(peer.tried) >= count

    return enough


def _verifies(secret: str, received: Any) -> bool:
    try:
        Webhook(secret).verify(received.raw, received.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_a_bots_new_signing_secret_signs_beside_the_old_one_for_the_overlap(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock(time.time())  # the reference verifier checks the real time
    raw = config(peers, tmp_path / "r.db")
    raw["integrations"][0] |= {"signing_secret": OLD, "signed_calls": True}
    daemon = await start_router(config=raw, clock=clock)  # signed_calls is the file's
    assert (await daemon.admin("PATCH", "/v1/admin/integrations/support-bot", {}))[0] == 400
    conflict = await daemon.admin(
        "PATCH", "/v1/admin/integrations/support-bot", {"signing_secret": NEW}
    )
    assert (conflict[0], conflict[1]["error"]) == (409, "defined_in_config")
    # Changed in the file and reloaded instead.
    reloader = Reloader(daemon, raw, tmp_path / "router.toml")
    raw = reloader.edited()
    raw["integrations"][0]["signing_secret"] = NEW
    await reloader.applied(raw)
    cid = await conversation(daemon, peers.bot)
    [delivered] = peers.bot.received
    assert len(delivered.headers["webhook-signature"].split()) == 2
    assert _verifies(OLD, delivered) and _verifies(NEW, delivered)  # either receiver holds
    # A signed caller may sign with either while the overlap lasts.
    for number, secret in enumerate((OLD, NEW)):
        answer = await _signed_call(daemon, clock, secret, cid, f"msg_{number}")
        assert answer == 202
    clock.advance(HOUR)
    assert await _signed_call(daemon, clock, OLD, cid, "msg_late") == 401
    await daemon.customer("after", "m2")
    await peers.bot.wait_for(2)
    after = peers.bot.received[-1]  # an hour on: compared, as the verifier would refuse the time
    stamp = datetime.fromtimestamp(int(after.headers["webhook-timestamp"]), tz=UTC)
    expected = Webhook(NEW).sign(after.headers["webhook-id"], stamp, after.raw.decode())
    assert after.headers["webhook-signature"] == expected


async def _signed_call(
    daemon: Daemon, clock: ManualClock, secret: str, cid: str, webhook_id: str
) -> int:
    body = {"Event": "Custom Event", "conversation_id": cid}
    raw, headers = signed(body, webhook_id, at=clock.now(), secret=secret)
    url = f"{daemon.public}/v1/bots/support-bot/bot-hook"
    async with daemon.session.post(url, data=raw, headers=headers) as answer:
        return answer.status


async def test_a_new_webhook_token_over_the_admin_api_keeps_the_old_url_working_for_the_overlap(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    raw = config(peers, tmp_path / "r.db")
    raw["integrations"].append(
        {"id": "generated", "name": "G", "url": peers.bot.url, "access_token": "g-secret"}
    )
    daemon = (await start(start_router, raw, tmp_path, clock)).daemon
    _, created = await daemon.admin(
        "POST",
        "/v1/admin/integrations",
        {"name": "Sales", "url": peers.bot.url, "access_token": "s"},
    )
    old_url = created["webhook_url"]
    status, rotated = await daemon.admin(
        "POST", f"/v1/admin/integrations/{created['id']}/webhook_token", {"overlap_s": 60}
    )
    assert status == 200 and rotated["webhook_url"] != old_url
    unknown = {"Event": "Custom Event", "conversation_id": "no-such"}
    for url in (old_url, rotated["webhook_url"]):
        assert (await _post(daemon, url, unknown))[0] == 404  # past the token: authenticated
    clock.advance(60)
    assert (await _post(daemon, old_url, unknown))[0] == 401
    # overlap_s 0: a leaked token ends at once, and so does any earlier one still in overlap.
    _, twice = await daemon.admin("POST", f"/v1/admin/integrations/{created['id']}/webhook_token")
    _, leaked = await daemon.admin(
        "POST", f"/v1/admin/integrations/{created['id']}/webhook_token", {"overlap_s": 0}
    )
    for url in (rotated["webhook_url"], twice["webhook_url"]):
        assert (await _post(daemon, url, unknown))[0] == 401
    assert (await _post(daemon, leaked["webhook_url"], unknown))[0] == 404
    # A token the file sets is changed in the file; a generated one of a file's bot is not.
    status, body = await daemon.admin("POST", "/v1/admin/integrations/support-bot/webhook_token")
    assert (status, body["error"]) == (409, "defined_in_config")
    status, _ = await daemon.admin("POST", "/v1/admin/integrations/generated/webhook_token")
    assert status == 200
    bad = await daemon.admin("POST", "/v1/admin/integrations/generated/webhook_token", {"x": 1})
    assert bad[0] == 400
    bad = await daemon.admin(
        "PATCH", "/v1/admin/integrations/generated", {"name": "G", "overlap_s": -1}
    )
    assert bad[0] == 400


async def test_a_deleted_bots_secrets_leave_with_it(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = (await start(start_router, config(peers, tmp_path / "r.db"), tmp_path, clock)).daemon
    new = {"id": "sales", "name": "Sales", "url": peers.bot.url, "access_token": "s"}
    _, created = await daemon.admin("POST", "/v1/admin/integrations", new)
    await daemon.admin("POST", "/v1/admin/integrations/sales/webhook_token")
    _, listed = await daemon.admin("GET", "/v1/admin/secrets")
    assert [o["owner"] for o in listed["overlaps"]] == ["bot:sales"]
    assert (await daemon.admin("DELETE", "/v1/admin/integrations/sales"))[0] == 204
    assert (await daemon.admin("GET", "/v1/admin/secrets"))[1] == {"overlaps": []}
    # The same id again does not inherit the old token.
    await daemon.admin("POST", "/v1/admin/integrations", new)
    unknown = {"Event": "Custom Event", "conversation_id": "no-such"}
    assert (await _post(daemon, created["webhook_url"], unknown))[0] == 401


async def _post(daemon: Daemon, url: str, body: Any) -> tuple[int, Any]:
    async with daemon.session.post(url, json=body) as answer:
        return answer.status, await answer.json()


@pytest.mark.parametrize("overlap", [-1, 90 * 86_400 + 1])
def test_the_overlap_in_the_file_is_checked(peers: Peers, tmp_path: Path, overlap: int) -> None:
    with pytest.raises(ConfigError, match=r"admin\.secret_overlap_s"):
        parse_config(config(peers, tmp_path / "r.db", secret_overlap_s=overlap), "t.toml")


async def test_a_peer_that_refuses_both_tokens_costs_one_failed_attempt_and_a_move_ends_the_overlap(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: Serve
) -> None:
    clock = ManualClock()
    bot = await gatekeeper(aiohttp_server, set())
    bot.refusal = 403
    raw = config(peers, tmp_path / "r.db")
    raw["integrations"][0]["url"] = bot.url
    daemon = await managed(start_router, raw, clock)
    change = {"access_token": "bot-secret-2"}
    assert (await daemon.admin("PATCH", "/v1/admin/integrations/support-bot", change))[0] == 200
    await daemon.customer("hi", "m1")
    await daemon.until(_attempted(bot, 2))
    assert [t.headers["Authorization"] for t in bot.tried] == [
        "Bearer bot-secret-2",
        "Bearer bot-secret",
    ]

    async def failed_once() -> bool:
        _, view = await daemon.admin("GET", "/v1/admin/integrations/support-bot")
        return bool(view["consecutive_failures"] == 1)

    await daemon.until(failed_once)
    # A new URL and token together: the old token is never presented at the new place.
    elsewhere = await gatekeeper(aiohttp_server, {"bot-secret-2"})
    change = {"url": elsewhere.url, "access_token": "bot-secret-3"}
    assert (await daemon.admin("PATCH", "/v1/admin/integrations/support-bot", change))[0] == 200
    _, listed = await daemon.admin("GET", "/v1/admin/secrets")
    assert not [o for o in listed["overlaps"] if o["kind"] == "token"]
    clock.advance(60)  # the retry
    await daemon.until(_attempted(elsewhere, 1))
    assert [t.headers["Authorization"] for t in elsewhere.tried] == ["Bearer bot-secret-3"]


async def test_a_ccsps_access_token_and_signing_secret_rotate_by_reload(
    start_router: StartRouter, peers: Peers, tmp_path: Path, aiohttp_server: Serve
) -> None:
    clock = ManualClock(time.time())  # the reference verifier checks the real time
    ccsp = await gatekeeper(aiohttp_server, {"ccsp-secret"})
    raw = config(peers, tmp_path / "r.db")
    raw["ccsp"][0] |= {"url": ccsp.url, "signing_secret": OLD}
    reloader = await start(start_router, raw, tmp_path, clock)
    daemon = reloader.daemon
    unrelated = reloader.edited()
    unrelated["limits"] = {"asset_rate_per_s": 50}
    await reloader.applied(unrelated)
    assert (await daemon.admin("GET", "/v1/admin/secrets"))[1] == {"overlaps": []}
    raw = reloader.edited()
    raw["ccsp"][0] |= {"access_token": "ccsp-secret-2", "signing_secret": NEW}
    await reloader.applied(raw)
    cid = await conversation(daemon, peers.bot)
    assert (await daemon.bot({"Event": "Handover", "conversation_id": cid}))[0] == 202
    [handover] = await ccsp.wait_for(1)
    assert handover["Event"] == "Handover"
    assert [t.headers["Authorization"] for t in ccsp.tried] == [
        "Bearer ccsp-secret-2",
        "Bearer ccsp-secret",
    ]
    assert _verifies(OLD, ccsp.received[0]) and _verifies(NEW, ccsp.received[0])
    # The same secrets again with no overlap: the old ones end at once.
    raw = reloader.edited()
    raw["admin"]["secret_overlap_s"] = 0
    raw["ccsp"][0]["access_token"] = "ccsp-secret-3"
    applied, events = await reloader.reload(raw)
    assert applied
    ended = {(e["kind"], e["owner"]) for e in events if e["event"] == "secret_overlap_ended"}
    assert ended == {("token", "ccsp:agents")}
    _, listed = await daemon.admin("GET", "/v1/admin/secrets")
    assert [(o["kind"], o["owner"]) for o in listed["overlaps"]] == [("signing", "ccsp:agents")]
