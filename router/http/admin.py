"""The operator's API under /v1/admin: integrations, CCSPs, dead letters and poisoned events;
conversations have theirs in `conversation_admin`."""

from __future__ import annotations

import re
import secrets
import sqlite3
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from router.config.secrets import signing_secret_problem
from router.config.urls import has_credentials, url_problem
from router.domain.commands import ToConversation, Verified
from router.domain.events import Replay
from router.http.conversation_admin import conversation_routes
from router.http.customer_admin import customer_routes
from router.http.inbound import InputError, bad_request, row_id
from router.http.openapi import openapi_routes
from router.http.public import ROUTER
from router.http.rotation_admin import overlap_from, replace_webhook_token, secrets_view
from router.http.util import json_response, read_json, require_bearer
from router.io.records import (
    SaveIntegrationState,
    apply_writes,
    get_delivery,
    owed_to_bot,
    revive_dead_letter,
    revive_poisoned,
)

if TYPE_CHECKING:
    from router.daemon import Router
    from router.io.integrations import Integration


def admin_routes(app: web.Application) -> None:
    openapi_routes(app)  # the document describes these and the public doors
    app.router.add_get("/v1/admin/ccsp", list_ccsp)
    app.router.add_get("/v1/admin/ccsp/{id}", get_ccsp)
    app.router.add_get("/v1/admin/integrations", list_integrations)
    app.router.add_post("/v1/admin/integrations", create_integration)
    app.router.add_get("/v1/admin/integrations/{id}", get_integration)
    app.router.add_patch("/v1/admin/integrations/{id}", patch_integration)
    app.router.add_delete("/v1/admin/integrations/{id}", delete_integration)
    app.router.add_post("/v1/admin/integrations/{id}/verify", verify_integration)
    app.router.add_post("/v1/admin/integrations/{id}/webhook_token", new_webhook_token)
    app.router.add_get("/v1/admin/secrets", list_secrets)
    app.router.add_post("/v1/admin/dead-letters/{id}/replay", replay_dead_letter)
    app.router.add_post("/v1/admin/poisoned-events/{id}/replay", replay_poisoned_event)
    conversation_routes(app)
    customer_routes(app)


def _admin(request: web.Request) -> Router:
    router = request.app[ROUTER]
    require_bearer(request, router.admin_tokens())
    return router


def _integration(router: Router, request: web.Request) -> Integration:
    item_id = request.match_info["id"]
    integration = router.integrations.items.get(item_id)
    if integration is None:
        raise _unknown(item_id)
    return integration


def _unknown(item_id: str) -> InputError:
    return InputError(404, "unknown_integration", f"no integration {item_id!r}")


async def _view(router: Router, integration: Integration) -> dict[str, Any]:
    health = await router.integrations.health()
    return router.integration_view(integration, health.get(integration.id, {}))


def _ccsp_view(router: Router, ccsp_id: str) -> dict[str, Any]:
    ccsp = router.config.ccsp(ccsp_id)
    assert ccsp is not None
    return {"id": ccsp.id, "url": ccsp.url, "webhook_url": router.ccsp_webhook_url(ccsp.id)}


async def list_ccsp(request: web.Request) -> web.Response:
    router = _admin(request)
    return json_response([_ccsp_view(router, c.id) for c in router.config.ccsps])


async def get_ccsp(request: web.Request) -> web.Response:
    router = _admin(request)
    if router.config.ccsp(request.match_info["id"]) is None:
        raise InputError(404, "unknown_ccsp", f"no CCSP {request.match_info['id']!r}")
    return json_response(_ccsp_view(router, request.match_info["id"]))


async def list_integrations(request: web.Request) -> web.Response:
    router = _admin(request)
    health = await router.integrations.health()
    return json_response(
        [
            router.integration_view(i, health.get(i.id, {}))
            for i in router.integrations.items.values()
        ]
    )


async def get_integration(request: web.Request) -> web.Response:
    router = _admin(request)
    return json_response(await _view(router, _integration(router, request)))


EDITABLE = ("name", "url", "access_token", "signing_secret")
OPTIONAL = ("id", "signing_secret")


def _fields(body: Any, *, required: bool) -> dict[str, str | None]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    keys = (*EDITABLE, "id") if required else EDITABLE
    allowed = keys if required else (*keys, "overlap_s")  # how long replaced ones stay good
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; expected {', '.join(allowed)}")
    fields: dict[str, str | None] = {}
    for key in keys:
        value = body.get(key)
        if value is None:
            if required and key not in OPTIONAL:
                raise bad_request(f"{key} is required")
            if key == "signing_secret" and key in body and not required:
                fields[key] = None  # null removes it: deliveries go unsigned again
            continue
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f"{key} must be a non-empty string")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise bad_request(f"{key} must not contain control characters")
        if key == "url":
            _check_url(value)
        if key == "id":
            _check_id(value)
        if key == "signing_secret" and (reason := signing_secret_problem(value)) is not None:
            raise bad_request(f"signing_secret {reason}")
        fields[key] = value
    if not required and not fields:
        raise bad_request(f"nothing to change; send any of {', '.join(EDITABLE)}")
    return fields


ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _check_id(value: str) -> None:
    """An id travels as a path segment and into logs: a small alphabet keeps it unambiguous."""
    if not ID_PATTERN.fullmatch(value) or value in (".", ".."):
        raise bad_request(
            "id must be 1 to 64 letters, digits, '.', '_' or '-', and not '.' or '..'"
        )


def _check_url(value: str) -> None:
    """A URL no attempt could reach is refused now, rather than failing every delivery later."""
    problem = url_problem(value)
    if problem is not None:
        raise bad_request(f"url {problem}")
    if has_credentials(value):
        # Credentials in the URL are sent as Basic auth, which cannot stand beside the
        # Authorization header an integration's access token always goes in.
        raise bad_request("url must not carry user:password@; the access token authenticates")


async def create_integration(request: web.Request) -> web.Response:
    router = _admin(request)
    fields = _fields(await read_json(request), required=True)
    if fields.get("id") in router.integrations.items:
        raise InputError(409, "duplicate_id", f"integration {fields['id']!r} exists")
    try:
        integration = await router.integrations.create(
            str(fields["name"]),
            str(fields["url"]),
            str(fields["access_token"]),
            fields.get("id"),
            fields.get("signing_secret"),
        )
    except sqlite3.IntegrityError:
        raise InputError(409, "duplicate_id", f"integration {fields['id']!r} exists") from None
    router.add_endpoint(integration)
    return json_response(await _view(router, integration), status=201)


async def patch_integration(request: web.Request) -> web.Response:
    router = _admin(request)
    integration = _integration(router, request)
    body = await read_json(request)
    fields, overlap = _fields(body, required=False), overlap_from(body)
    secrets_set = [key for key in ("access_token", "signing_secret") if key in fields]
    if integration.origin == "config" and secrets_set:
        # A reload or restart would put the file's value back, and the new one out of use.
        raise InputError(
            409,
            "defined_in_config",
            f"{integration.id!r} has its {secrets_set[0]} in {router.config.source}; "
            "change it there and reload",
        )
    async with router.reloading:  # no reload lands between the secrets before and after
        before = router.rotation.slots()
        try:
            integration = await router.integrations.update(integration.id, fields)
        except KeyError:
            raise _unknown(integration.id) from None
        router.reconfigure_endpoint(integration)
        await router.rotation.changed(before, overlap)  # a replaced secret stays good a while
    return json_response(await _view(router, integration))


async def delete_integration(request: web.Request) -> web.Response:
    router = _admin(request)
    integration = _integration(router, request)
    if integration.origin == "config":
        raise InputError(
            409,
            "defined_in_config",
            f"{integration.id!r} is defined in {router.config.source}; remove it there",
        )
    if any(r.bot == integration.id for s in router.config.services for r in s.rules):
        raise InputError(409, "in_use", f"a service rule routes to {integration.id!r}")
    owed = await router.store.read(lambda c: owed_to_bot(c, integration.id))
    if owed:
        raise InputError(409, "deliveries_pending", f"{owed} deliveries are still owed to it")
    async with router.reloading:
        before = router.rotation.slots()
        await router.integrations.delete(integration.id)
        router.remove_endpoint(integration.id)
        await router.rotation.changed(before)  # its old secrets must not outlive it
    return web.Response(status=204)


async def new_webhook_token(request: web.Request) -> web.Response:
    router = _admin(request)
    integration = _integration(router, request)
    try:
        updated = await replace_webhook_token(request, router, integration)
    except KeyError:
        raise _unknown(integration.id) from None
    return json_response(await _view(router, updated))


async def list_secrets(request: web.Request) -> web.Response:
    return secrets_view(_admin(request))


async def verify_integration(request: web.Request) -> web.Response:
    """Send a challenge; only the same challenge back, in time, returns the bot to service."""
    router = _admin(request)
    integration = _integration(router, request)
    challenge = secrets.token_urlsafe(18)
    answer = await router.edge.exchange(
        integration.url,
        integration.access_token,
        {"Event": "Verify", "challenge": challenge},
        webhook_id=f"msg_verify_{challenge}",  # signed like every other call it gets
        secret=integration.signing_secret,
        dest=f"bot:{integration.id}",
    )
    ok, error = answer.ok, answer.error
    if ok:
        try:
            echoed = orjson.loads(answer.payload)
        except orjson.JSONDecodeError:
            echoed = None
        if not isinstance(echoed, dict) or echoed.get("challenge") != challenge:
            ok, error = False, "the answer did not carry the challenge that was sent"
    if not ok:
        raise InputError(422, "verification_failed", f"webhook verification failed: {error}")
    # Written before answering, so a GET right after sees it; the endpoint actor follows.
    write = SaveIntegrationState(integration.id, "active", 0)
    await router.store.write(lambda c: apply_writes(c, (write,)))
    endpoint = router.endpoints.get(f"bot:{integration.id}")
    if endpoint is None:
        raise _unknown(integration.id)  # deleted while the challenge was out
    endpoint.tell(Verified(router.core))
    return json_response(await _view(router, integration))


async def replay_dead_letter(request: web.Request) -> web.Response:
    router = _admin(request)
    delivery_id = row_id(request.match_info["id"], "a dead letter id")
    delivery = await router.store.read(lambda c: get_delivery(c, delivery_id))
    unknown = InputError(404, "unknown_dead_letter", f"no dead letter {delivery_id}")
    if delivery is None or delivery.status != "dead":
        raise unknown
    if delivery.reason == "session_abandoned":
        raise InputError(
            409,
            "session_abandoned",
            "it belongs to an agent session that was abandoned; the bot has the conversation",
        )
    # Owed again on disk before the answer: a restart now resumes it like any other delivery.
    revived = await router.store.write(lambda c: revive_dead_letter(c, delivery_id))
    if not revived:
        raise unknown  # replayed by someone else meanwhile
    router.core.tell(ToConversation(delivery.conversation_id, Replay(delivery)))
    return json_response({"replayed": delivery_id}, status=202)


async def replay_poisoned_event(request: web.Request) -> web.Response:
    """Route a poisoned event again, as if it had just been accepted: pending on disk first."""
    router = _admin(request)
    inbox_id = row_id(request.match_info["id"], "a poisoned event id")
    row = await router.store.write(lambda c: revive_poisoned(c, inbox_id))
    if row is None:
        raise InputError(404, "unknown_poisoned_event", f"no poisoned event {inbox_id}")
    await router.replay_inbox(inbox_id, row["source"], row["source_id"], orjson.loads(row["body"]))
    return json_response({"replayed": inbox_id}, status=202)
