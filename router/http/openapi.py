"""The public and admin API as an OpenAPI 3.1 document, served at `GET /openapi.json`.

Written out by hand from the same contract the README states, and checked against the live
daemon by a fuzzing test: a status or a shape the daemon answers that is not here fails it.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from router.config.shapes import MAX_SECRET_OVERLAP_S
from router.http.customer_admin import ERASED

JSON = "application/json"
Schema = dict[str, Any]

ERROR: Schema = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
ACCEPTED: Schema = {
    "type": "object",
    "required": ["accepted"],
    "properties": {
        "accepted": {"const": True},
        "duplicate": {"type": "boolean"},
        "Messageid": {"type": "string"},
        "Conversationid": {"type": "string"},
        "CCSPConversationid": {"type": ["string", "null"]},
    },
}
INTEGRATION: Schema = {
    "type": "object",
    "required": ["id", "name", "url", "state", "webhook_url", "consecutive_failures"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "url": {"type": "string"},
        "state": {"enum": ["active", "inactive"]},
        "webhook_url": {"type": "string"},
        "consecutive_failures": {"type": "integer"},
    },
}
CCSP: Schema = {
    "type": "object",
    "required": ["id", "url", "webhook_url"],
    "properties": {
        "id": {"type": "string"},
        "url": {"type": "string"},
        "webhook_url": {"type": "string"},
    },
}
# Input keys are matched without regard to case or underscores, and custom parameters
# travel on: the bodies are open objects; the parser's own refusals are 400s.
EVENT_BODY: Schema = {"type": "object", "additionalProperties": True}
ERRORS = {
    400: "malformed or invalid input",
    401: "a missing or wrong token",
    404: "an unknown conversation, integration, CCSP, dead letter or poisoned event",
    409: "a conflict with the conversation's or integration's state",
    408: "the headers or the body did not arrive within their deadline",
    413: "a body over `max_body_bytes`",
    415: "a compressed or otherwise encoded body",
    417: "an `Expect` other than `100-continue`",
    422: "a failed verification",
    429: "over a rate or connection limit; `Retry-After` says when to try again",
    431: "headers over `max_header_bytes`",
    503: "the store cannot commit, the daemon is stopping or too many connections are open; "
    "`Retry-After` says when to retry",
}


def _error(status: int) -> Schema:
    return {"description": ERRORS[status], "content": {JSON: {"schema": ERROR}}}


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _operation(
    summary: str,
    answers: dict[int, Schema],
    errors: tuple[int, ...],
    *,
    params: tuple[str, ...] = (),
    body: Schema | None = None,
    body_required: bool = True,
    secured: bool = True,
) -> Schema:
    operation: Schema = {
        "summary": summary,
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ],
        "responses": {
            **{str(status): answer for status, answer in answers.items()},
            **{str(status): _error(status) for status in errors},
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {JSON: {"schema": body}},
        }
    if not secured:
        operation["security"] = []
    return operation


# What any request may meet before its handler runs: the connection guard and admission.
DOOR = (408, 413, 415, 417, 429, 431, 503)
INTAKE_ERRORS = (400, 401, 404, 409, *DOOR)
ADMIN_ERRORS = (401, *DOOR)


def document() -> Schema:
    accepted = _json("accepted: on disk before this answer", ACCEPTED)
    duplicate = _json(
        "the same `Messageid` again on this asset, or a signed call's `webhook-id` again: "
        "not delivered again",
        ACCEPTED,
    )
    integration = _json("the integration (never its access token)", INTEGRATION)
    replayed = _json(
        "owed again, behind its conversation's queue",
        {"type": "object", "required": ["replayed"], "properties": {"replayed": {}}},
    )
    passivated = {
        "type": "object",
        "required": ["Conversationid", "passivated"],
        "properties": {"Conversationid": {"type": "string"}, "passivated": {"type": "boolean"}},
    }
    erased = {
        "type": "object",
        "required": ["asset", "Userid", *ERASED],
        "properties": {
            "asset": {"type": "string"},
            "Userid": {"type": "string"},
            **{count: {"type": "integer", "minimum": 0} for count in ERASED},
        },
    }
    new_integration = {
        "type": "object",
        "required": ["name", "url", "access_token"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "url": {"type": "string"},
            "access_token": {"type": "string"},
            "signing_secret": {"type": "string", "description": "whsec_…; never shown"},
        },
    }
    overlap_s = {
        "type": "number",
        "minimum": 0,
        "maximum": MAX_SECRET_OVERLAP_S,
        "description": "how long the replaced value stays good (default "
        "`admin.secret_overlap_s`); 0 ends it and any earlier one at once",
    }
    change = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "url": {"type": "string"},
            "access_token": {"type": "string"},
            "signing_secret": {"type": ["string", "null"], "description": "null removes it"},
            "overlap_s": overlap_s,
        },
    }
    overlaps = {
        "type": "object",
        "required": ["overlaps"],
        "properties": {
            "overlaps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kind", "owner", "until"],
                    "properties": {
                        "kind": {"enum": ["admin", "webhook", "token", "signing"]},
                        "owner": {"type": "string"},
                        "until": {"type": "number", "description": "Unix seconds"},
                    },
                },
            }
        },
    }
    paths: Schema = {
        "/v1/channels/{asset_id}/events": {
            "post": _operation(
                "A channel adapter's event: a customer message, a postback, a delivery report",
                {202: accepted, 200: duplicate},
                INTAKE_ERRORS,
                params=("asset_id",),
                body=EVENT_BODY,
            )
        },
        "/v1/bots/{integration_id}/{webhook_token}": {
            "post": _operation(
                "A bot's event: a reply, a handover, a close, a milestone, ...",
                {202: accepted, 200: duplicate},
                INTAKE_ERRORS,
                params=("integration_id", "webhook_token"),
                body=EVENT_BODY,
                secured=False,
            )
        },
        "/v1/ccsp/{ccsp_id}/{webhook_token}": {
            "post": _operation(
                "A contact center's event: an agent message or a close",
                {202: accepted, 200: duplicate},
                INTAKE_ERRORS,
                params=("ccsp_id", "webhook_token"),
                body=EVENT_BODY,
                secured=False,
            )
        },
        "/v1/admin/ccsp": {
            "get": _operation(
                "The CCSPs",
                {200: _json("every CCSP", {"type": "array", "items": CCSP})},
                ADMIN_ERRORS,
            )
        },
        "/v1/admin/ccsp/{id}": {
            "get": _operation(
                "One CCSP", {200: _json("the CCSP", CCSP)}, (*ADMIN_ERRORS, 404), params=("id",)
            )
        },
        "/v1/admin/integrations": {
            "get": _operation(
                "The bots",
                {200: _json("every bot", {"type": "array", "items": INTEGRATION})},
                ADMIN_ERRORS,
            ),
            "post": _operation(
                "Add a bot",
                {201: integration},
                (*ADMIN_ERRORS, 400, 409, 413),
                body=new_integration,
            ),
        },
        "/v1/admin/integrations/{id}": {
            "get": _operation("One bot", {200: integration}, (*ADMIN_ERRORS, 404), params=("id",)),
            "patch": _operation(
                "Change a bot's name, URL, access token or signing secret (does not reactivate "
                "it); a replaced secret stays good for the overlap",
                {200: integration},
                (*ADMIN_ERRORS, 400, 404, 413),
                params=("id",),
                body=change,
            ),
            "delete": _operation(
                "Remove a bot not in the file, named by no rule, owed nothing",
                {204: {"description": "removed"}},
                (*ADMIN_ERRORS, 404, 409),
                params=("id",),
            ),
        },
        "/v1/admin/integrations/{id}/verify": {
            "post": _operation(
                "Send a challenge; active again when the bot echoes it",
                {200: integration},
                (*ADMIN_ERRORS, 404, 422),
                params=("id",),
            )
        },
        "/v1/admin/integrations/{id}/webhook_token": {
            "post": _operation(
                "A new webhook token (and webhook_url); the old one stays good for the overlap",
                {200: integration},
                (*ADMIN_ERRORS, 400, 404, 409),
                params=("id",),
                body={"type": "object", "properties": {"overlap_s": overlap_s}},
                body_required=False,
            )
        },
        "/v1/admin/secrets": {
            "get": _operation(
                "Which secrets are in overlap beside their successor, and until when",
                {200: _json("never a value", overlaps)},
                ADMIN_ERRORS,
            )
        },
        "/v1/admin/dead-letters/{id}/replay": {
            "post": _operation(
                "Send a dead letter again",
                {202: replayed},
                (*ADMIN_ERRORS, 400, 404, 409),
                params=("id",),
            )
        },
        "/v1/admin/poisoned-events/{id}/replay": {
            "post": _operation(
                "Route a poisoned event again",
                {202: replayed},
                (*ADMIN_ERRORS, 400, 404),
                params=("id",),
            )
        },
        "/v1/admin/conversations/{id}/close-session": {
            "post": _operation(
                "End the agent session (Reason: operator)",
                {202: accepted},
                (*ADMIN_ERRORS, 404, 409),
                params=("id",),
            )
        },
        "/v1/admin/conversations/{id}/close": {
            "post": _operation(
                "Close the conversation as its bot's Close would",
                {202: accepted},
                (*ADMIN_ERRORS, 404, 409),
                params=("id",),
            )
        },
        "/v1/admin/conversations/{id}/passivate": {
            "post": _operation(
                "Let the conversation's actor leave memory",
                {
                    200: _json("it left memory, or was not in it", passivated),
                    202: _json("it leaves once its attempt is answered", passivated),
                },
                (*ADMIN_ERRORS, 404),
                params=("id",),
            )
        },
        "/v1/admin/customers/{asset_id}/{user_id}": {
            "delete": _operation(
                "Erase everything kept about one user of an asset, open conversations included",
                {200: _json("what was removed, by kind", erased)},
                (*ADMIN_ERRORS, 404),
                params=("asset_id", "user_id"),
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document",
                {200: _json("OpenAPI 3.1", {"type": "object"})},
                DOOR,
                secured=False,
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conversation router",
            "version": "1",
            "description": (
                "Routes customer events from digital channels to flows, bots and contact-"
                "center agents. Accepted events are on disk before their 2xx. Input keys "
                "match without regard to case or underscores."
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the asset's token on channel events; the admin token "
                    "under /v1/admin",
                }
            }
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def openapi_routes(app: web.Application) -> None:
    body = orjson.dumps(document())

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    app.router.add_get("/openapi.json", serve)
