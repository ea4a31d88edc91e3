"""The debug port (loopback by default): health, metrics, and what the actors hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.domain.model import Delivery
from router.domain.timestamps import iso_timestamp
from router.http.inbound import InputError, bad_request, row_id
from router.http.public import ROUTER
from router.http.util import error_middleware, json_response
from router.io.records import (
    conversation_deliveries,
    dead_letters,
    get_conversation,
    list_conversations,
    parked_counts,
    ping,
    poisoned_events,
    transcript,
)

if TYPE_CHECKING:
    from router.daemon import Router
    from router.domain.state import Conversation

MAX_PAGE = 500


def debug_app(router: Router) -> web.Application:
    app = web.Application(middlewares=[error_middleware(lambda s: None)])
    app[ROUTER] = router
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/integrations", integrations)
    app.router.add_get("/debug/conversations", conversations)
    app.router.add_get("/debug/conversations/{conversation_id}", conversation)
    app.router.add_get("/debug/dead-letters", dead_letter_list)
    app.router.add_get("/debug/poisoned-events", poisoned_event_list)
    app.router.add_get("/debug/directory", directory)
    return app


def _page(request: web.Request) -> tuple[int, str]:
    raw = request.query.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        raise bad_request(f"limit must be a whole number, got {raw!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"limit must be between 1 and {MAX_PAGE}")
    return limit, request.query.get("cursor", "")


def delivery_view(d: Delivery) -> dict[str, Any]:
    return {
        "delivery_id": d.delivery_id,
        "destination": d.dest.key,
        "status": d.status,
        "attempt": d.attempts,
        "next_attempt_at": iso_timestamp(d.next_attempt_at),
        "last_error": d.last_error,
        "reason": d.reason,
        "created_at": iso_timestamp(d.created_at),
        "body": d.body,
    }


def conversation_view(c: Conversation) -> dict[str, Any]:
    return {
        "conversation_id": c.conversation_id,
        "asset": c.asset,
        "channel": c.channel,
        "user": c.user,
        "service": c.service,
        "bot": c.bot,
        "ccsp": c.ccsp,
        "flow": c.flow,
        "route": c.route,
        "ccsp_conversation_id": c.ccsp_conversation_id,
        "handover_deadline_at": iso_timestamp(c.handover_deadline_at),
        "session_used_at": iso_timestamp(c.session_used_at),
        "status": c.status,
        "created_at": iso_timestamp(c.created_at),
        "closed_at": iso_timestamp(c.closed_at),
    }


async def healthz(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    await router.store.read(ping)
    failures = router.edge.store_failures
    if failures or router.edge.fenced:
        return json_response(
            {
                "status": "degraded",
                "store_failures": failures,
                "message": "the store failed; restart the daemon to resume from disk",
            },
            status=503,
        )
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    body = generate_latest(router.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def integrations(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    health = await router.integrations.health()
    parked = await router.store.read(parked_counts)
    views = []
    for i in list(router.integrations.items.values()):
        supervision = await router.inspect(f"bot:{i.id}")
        views.append(
            {
                **router.integration_view(i, health.get(i.id, {})),
                "parked": parked.get(i.id, 0),
                "restarts": supervision.get("restarts", 0),
                "poisoned_events": supervision.get("poisoned_events", 0),
            }
        )
    return json_response(views)


async def directory(request: web.Request) -> web.Response:
    """The core's live view: resident, loading, retiring and restarting conversations."""
    return json_response(await request.app[ROUTER].inspect("core"))


async def poisoned_event_list(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    limit, cursor = _page(request)
    after = row_id(cursor, "cursor") if cursor else 0
    rows = await router.store.read(lambda c: poisoned_events(c, limit + 1, after))
    page = rows[:limit]
    return json_response(
        {
            "poisoned_events": [
                {
                    "inbox_id": r["inbox_id"],
                    "source": r["source"],
                    "source_id": r["source_id"],
                    "conversation_id": r["conversation_id"],
                    "error": r["error"],
                    "received_at": iso_timestamp(r["received_at"]),
                    "body": orjson.loads(r["body"]) if r["body"] is not None else None,
                }
                for r in page
            ],
            "next_cursor": str(page[-1]["inbox_id"]) if len(rows) > limit else None,
        }
    )


async def conversations(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    limit, cursor = _page(request)
    items = await router.store.read(lambda c: list_conversations(c, limit + 1, cursor))
    page = items[:limit]
    return json_response(
        {
            "conversations": [conversation_view(c) for c in page],
            "next_cursor": page[-1].conversation_id if len(items) > limit else None,
        }
    )


async def conversation(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    cid = request.match_info["conversation_id"]
    found = await router.store.read(lambda c: get_conversation(c, cid))
    if found is None:
        raise InputError(404, "unknown_conversation", f"no conversation {cid!r}")
    deliveries = await router.store.read(lambda c: conversation_deliveries(c, cid))
    messages = await router.store.read(lambda c: transcript(c, cid))
    return json_response(
        {
            **conversation_view(found),
            "transcript": list(messages),
            "deliveries": [delivery_view(d) for d in deliveries if d.status != "dead"],
            "dead_letters": [delivery_view(d) for d in deliveries if d.status == "dead"],
        }
    )


async def dead_letter_list(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    limit, cursor = _page(request)
    after = row_id(cursor, "cursor") if cursor else 0
    items = await router.store.read(lambda c: dead_letters(c, limit + 1, after))
    page = items[:limit]
    return json_response(
        {
            "dead_letters": [
                {**delivery_view(d), "conversation_id": d.conversation_id} for d in page
            ],
            "next_cursor": str(page[-1].delivery_id) if len(items) > limit else None,
        }
    )
