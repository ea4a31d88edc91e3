"""The public port: channel adapters, bots and CCSPs post their events here.

Every handler checks the caller and the body first, stores the event, and answers only once
it is on disk; routing is by message. An event is routed as soon as its row is written
inside its group, so that its conversation's step joins the same commit; a delivery report
(whose sender is looked up first) and an event no rule takes, once durable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web

from router.http.admission import Admission, IntakeRates
from router.http.inbound import InputError, fold, parse_bot, parse_ccsp, parse_channel
from router.http.signed_callers import verify_caller
from router.http.store_gate import unavailable
from router.http.util import (
    bearer_in,
    error_middleware,
    json_response,
    read_json,
    status_code,
    token_matches,
)
from router.io.ids import new_id
from router.io.records import inbox_seen, insert_inbox

if TYPE_CHECKING:
    from router.daemon import Router

ROUTER: web.AppKey[Router] = web.AppKey("router")
ADMISSION: web.AppKey[Admission] = web.AppKey("admission", Admission)
RATES: web.AppKey[IntakeRates] = web.AppKey("rates", IntakeRates)
R = TypeVar("R")


def public_app(router: Router) -> web.Application:
    """The doors, behind the checks every request passes first (`router.http.admission`);
    the daemon adds the admin routes, then `guard_expectations`."""
    admission = Admission(router.config.server, router.clock, lambda: router.config.limits)
    app = web.Application(
        client_max_size=router.config.server.max_body_bytes,
        middlewares=[
            error_middleware(lambda s: router.metrics.errors(str(s)).inc()),
            admission.middleware,
        ],
    )
    app[ROUTER] = router
    # Innermost: a request that would write is refused at once while the store cannot commit.
    app.middlewares.append(router.store_gate.middleware)
    app[ADMISSION] = admission
    app[RATES] = IntakeRates(router.clock, lambda: router.config.limits)
    app.router.add_post("/v1/channels/{asset_id}/events", counted("channel", channel_event))
    app.router.add_post("/v1/bots/{integration_id}/{webhook_token}", counted("bot", bot_event))
    app.router.add_post("/v1/ccsp/{ccsp_id}/{webhook_token}", counted("ccsp", ccsp_event))
    return app


@dataclass
class Tally:
    """What a handler learns for its intake count: the channel the event belongs to (once
    the asset or the conversation is known) and, when it is accepted, how."""

    channel: str = ""
    result: str = "accepted"


Door = Callable[[web.Request, Tally], Awaitable[web.Response]]


def counted(source: str, door: Door) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Count every event a door receives once, by its channel and result: how it was
    accepted, or the error code it was refused with."""

    async def handler(request: web.Request) -> web.Response:
        return await tallied(request.app[ROUTER], source, lambda tally: door(request, tally))

    return handler


async def tallied(router: Router, source: str, door: Callable[[Tally], Awaitable[R]]) -> R:
    tally = Tally()
    inbound = router.metrics.inbound
    try:
        answer = await door(tally)
    except Exception as exc:
        inbound(source, tally.channel, _refusal(exc)).inc()
        raise
    inbound(source, tally.channel, tally.result).inc()
    return answer


def _refusal(exc: Exception) -> str:
    """The error code an event was refused with, as its answer will carry it."""
    if isinstance(exc, InputError):
        return exc.code
    if isinstance(exc, web.HTTPException):  # the body reader's 413
        return status_code(exc.status)
    return "internal_error"


ACCEPTED = {"accepted": True}
DUPLICATE = {"accepted": True, "duplicate": True}


async def _store_early(
    router: Router,
    source: str,
    source_id: str,
    dedupe: str | None,
    body: object,
    route: Callable[[int], None],
) -> tuple[int, bool]:
    """Store an event's row: (inbox id, duplicate) once it is durable. Unless it is a
    duplicate, `route` is called on its inbox id as soon as the row is written inside its
    group, so that the step it sets off joins the same commit. 503 at once while the store
    cannot commit, or when the commit fails."""
    router.store_gate.admit()
    raw = orjson.dumps(body)
    now = router.clock.now()

    def then(stored: tuple[int, bool]) -> None:
        inbox_id, duplicate = stored
        if not duplicate:
            route(inbox_id)

    written = router.store.write_early(
        lambda conn: insert_inbox(conn, source, source_id, dedupe, raw, now), then
    )
    try:
        return await written
    except sqlite3.Error as exc:
        raise unavailable(exc) from None


async def _signed(request: web.Request, source: str, source_id: str, secret: str) -> str | None:
    """A signed caller's dedupe key (its webhook-id); None when that id was accepted before,
    so the call is answered as a duplicate, whatever has become of its conversation since."""
    router = request.app[ROUTER]
    raw = await request.read()  # what read_json already read: the bytes that were signed
    secrets = router.rotation.accepted("signing", f"{source}:{source_id}", secret)
    key = f"webhook-id:{verify_caller(request, raw, secrets, router.clock.now())}"
    seen = await router.store.read(lambda conn: inbox_seen(conn, source, source_id, key))
    return None if seen else key


# Unknown ids and wrong tokens get the same answer, so ids cannot be probed for.
CHANNEL_UNAUTHORIZED = "a valid Authorization: Bearer token is required"
WEBHOOK_UNAUTHORIZED = "the webhook token does not match"
_NO_TOKEN = "\x00no such id\x00"  # compared like a real token, so the timing tells nothing


async def channel_event(request: web.Request, tally: Tally) -> web.Response:
    status, answer = await channel_door(
        request.app[ROUTER],
        request.app[RATES],
        request.match_info["asset_id"],
        request.headers.get("Authorization", ""),
        lambda: read_json(request),
        tally,
    )
    return json_response(answer, status=status)


async def channel_door(
    router: Router,
    rates: IntakeRates,
    asset_id: str,
    authorization: str,
    read: Callable[[], Awaitable[Any]],
    tally: Tally,
) -> tuple[int, dict[str, bool]]:
    """A channel event, from its asset id and `Authorization` header; its body is `read`
    once the caller is known. Served through aiohttp (`channel_event`) and on the lean path
    (`router.http.lean`) alike: (status, answer)."""
    asset = router.config.asset(asset_id)
    expected = (
        router.rotation.accepted("token", f"channel:{asset.id}", asset.token)
        if asset is not None
        else _NO_TOKEN
    )
    if not bearer_in(authorization, expected) or asset is None:
        raise InputError(401, "unauthorized", CHANNEL_UNAUTHORIZED)
    tally.channel = asset.channel
    rates.check("asset", asset.id)
    body = await read()
    event = parse_channel(body)
    intake = router.intake
    assert intake is not None
    routed: list[bool] = []

    def route(inbox_id: int) -> None:
        routed.append(intake.route_channel_now(asset, event, inbox_id))

    inbox_id, duplicate = await _store_early(
        router, "channel", asset.id, event.dedupe_key, body, route
    )
    if duplicate:
        tally.result = "duplicate"
        return 200, DUPLICATE
    # Not routed yet: it needs a read or a write first, now that it is stored.
    if not (routed and routed[0]) and not await intake.route_channel(asset, event, inbox_id):
        tally.result = "unrouted"
    return 202, ACCEPTED


async def bot_event(request: web.Request, tally: Tally) -> web.Response:
    router = request.app[ROUTER]
    integration_id = request.match_info["integration_id"]
    integration = router.integrations.items.get(integration_id)
    expected = (
        router.rotation.accepted("webhook", f"bot:{integration_id}", integration.webhook_token)
        if integration is not None
        else _NO_TOKEN
    )
    if not token_matches(request.match_info["webhook_token"], expected) or integration is None:
        raise InputError(401, "unauthorized", WEBHOOK_UNAUTHORIZED)
    request.app[RATES].check("integration", integration_id)
    body = await read_json(request)
    dedupe = None
    if integration.signed_calls and integration.signing_secret is not None:
        dedupe = await _signed(request, "bot", integration_id, integration.signing_secret)
        if dedupe is None:
            tally.result = "duplicate"
            return json_response(DUPLICATE, status=200)
    event = parse_bot(body)
    assert router.intake is not None
    conversation = await router.intake.check_bot(integration_id, event)
    tally.channel = conversation.channel
    answer: dict[str, object] = dict(ACCEPTED)
    if event.kind == "reply":
        if event.message_id is None:
            # Generated before storing, so a restart routes the reply under the same id.
            event = replace(event, message_id=new_id())
            # Any spelling left (a null one) would make the stored body ambiguous.
            body = {k: v for k, v in body.items() if fold(k) != "messageid"}
            body["Messageid"] = event.message_id
        answer["Messageid"] = event.message_id
    intake = router.intake

    def route(inbox_id: int) -> None:
        intake.route_bot(integration_id, event, conversation, inbox_id)

    _, duplicate = await _store_early(router, "bot", integration_id, dedupe, body, route)
    if duplicate:  # the same signed call twice at once: the other was stored
        tally.result = "duplicate"
        return json_response(DUPLICATE, status=200)
    return json_response(answer, status=202)


async def ccsp_event(request: web.Request, tally: Tally) -> web.Response:
    router = request.app[ROUTER]
    ccsp_id = request.match_info["ccsp_id"]
    token = router.ccsp_tokens.get(ccsp_id)
    expected = (
        router.rotation.accepted("webhook", f"ccsp:{ccsp_id}", token)
        if token is not None
        else _NO_TOKEN
    )
    if not token_matches(request.match_info["webhook_token"], expected) or (
        router.config.ccsp(ccsp_id) is None
    ):
        raise InputError(401, "unauthorized", WEBHOOK_UNAUTHORIZED)
    request.app[RATES].check("ccsp", ccsp_id)
    body = await read_json(request)
    ccsp = router.config.ccsp(ccsp_id)
    dedupe = None
    if ccsp is not None and ccsp.signed_calls and ccsp.signing_secret is not None:
        dedupe = await _signed(request, "ccsp", ccsp_id, ccsp.signing_secret)
        if dedupe is None:
            tally.result = "duplicate"
            return json_response(DUPLICATE, status=200)
    event = parse_ccsp(body)
    assert router.intake is not None
    conversation = await router.intake.check_ccsp(ccsp_id, event)
    tally.channel = conversation.channel
    intake = router.intake

    def route(inbox_id: int) -> None:
        intake.route_ccsp(event, conversation, inbox_id)

    _, duplicate = await _store_early(router, "ccsp", ccsp_id, dedupe, body, route)
    if duplicate:
        tally.result = "duplicate"
        return json_response(DUPLICATE, status=200)
    return json_response(ACCEPTED, status=202)
