"""The debug port (loopback by default): health, metrics, and what the actors hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.domain.model import Delivery
from router.domain.timestamps import iso_timestamp
from router.http.debug_access import debug_token_middleware, mask_url, mask_webhook_url
from router.http.inbound import InputError, bad_request, row_id
from router.http.public import ROUTER
from router.http.util import error_middleware, json_response
from router.io.inspection import (
    ConversationFilter,
    agent_sessions,
    dead_letter_summary,
    find_conversations,
    open_conversation_count,
)
from router.io.records import (
    conversation_deliveries,
    dead_letters,
    get_conversation,
    parked_counts,
    ping,
    poisoned_events,
    transcript,
)

if TYPE_CHECKING:
    from router.daemon import Router
    from router.domain.state import Conversation

MAX_PAGE = 500
PAGE = Path(__file__).parent / "page" / "debug.html"


def debug_app(router: Router) -> web.Application:
    app = web.Application(
        middlewares=[
            error_middleware(lambda s: None),
            debug_token_middleware(lambda: router.config.debug.token),
        ]
    )
    app[ROUTER] = router
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/integrations", integrations)
    app.router.add_get("/debug/conversations", conversations)
    app.router.add_get("/debug/conversations/{conversation_id}", conversation)
    app.router.add_get("/debug/dead-letters", dead_letter_list)
    app.router.add_get("/debug/poisoned-events", poisoned_event_list)
    app.router.add_get("/debug/directory", directory)
    app.router.add_get("/debug/runtime", runtime)
    app.router.add_get("/debug/", page)
    app.router.add_get("/debug", page)
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
    """`ok`, or `503 degraded` with what is wrong and since when: the store cannot commit
    (intake answers 503 until it does), or routing is held back after a failed write, or the
    router is resuming from the store. Both end by themselves once a commit succeeds."""
    router = request.app[ROUTER]
    store, edge = router.store, router.edge
    store.check_identity()  # a file deleted under an idle daemon is found here
    try:
        await store.read(ping)
    except sqlite3.Error as exc:
        store.health.read_failed(exc)
    health = store.health
    recovering = router.store_gate.recovering
    if not (health.failing or edge.fenced or recovering):
        found: dict[str, Any] = {"status": "ok"}
        if health.failures:
            found["store_failures"] = health.failures  # since the start, all behind it
        return json_response(found)
    started = [t for t in (health.failing_since, edge.fenced_since) if t is not None]
    refusal = router.store_gate.refusal()
    return json_response(
        {
            "status": "degraded",
            "store": "replaced" if health.replaced else "failing" if health.failing else "ok",
            "routing": "recovering" if recovering else "held" if edge.fenced else "ok",
            "intake": "refused" if refusal is not None else "open",
            "store_failures": health.failures,
            "since": iso_timestamp(min(started)) if started else None,
            "error": health.replaced or health.last_error,
            "message": refusal.message if refusal is not None else _HELD,
        },
        status=503,
    )


_HELD = "a write failed: routing is held back and resumes from the store by itself, in order"


async def metrics(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    body = generate_latest(router.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def integrations(request: web.Request) -> web.Response:
    """Each bot's supervisor as it is now, with what the store adds: parked and dead
    letters. `?state=` narrows the list."""
    router = request.app[ROUTER]
    wanted = request.query.get("state")
    if wanted is not None and wanted not in ("active", "inactive"):
        raise bad_request("state must be active or inactive")
    health = await router.integrations.health()
    parked = await router.store.read_aside(parked_counts)
    dead = await router.store.read_aside(dead_letter_summary)
    views = []
    supervisors = router.integrations_live()
    for i in list(router.integrations.items.values()):
        live = supervisors.get(i.id, {})
        shown = router.integration_view(i, health.get(i.id, {}))
        view = {
            **shown,
            "url": mask_url(shown["url"]),
            "webhook_url": mask_webhook_url(shown["webhook_url"]),
            "in_flight": live.get("in_flight", 0),
            "last_error": live.get("last_error"),
            "parked": parked.get(i.id, 0),
            "dead_letters": dead.get(i.id, (0, None))[0],
            "last_dead_letter_error": dead.get(i.id, (0, None))[1],
            "resident_conversations": live.get("resident_conversations", 0),
            "resident_sample": live.get("resident_sample", []),
            "restarts": live.get("restarts", 0),
            "poisoned_events": live.get("poisoned_events", 0),
        }
        if wanted is None or view["state"] == wanted:
            views.append(view)
    return json_response(views)


async def runtime(request: web.Request) -> web.Response:
    """The actor runtime: resident and passivated conversations, mail, rate, restarts."""
    router = request.app[ROUTER]
    view = router.runtime_view()
    stored_open = await router.store.read_aside(open_conversation_count)
    view["conversations"]["passivated"] = max(0, stored_open - view["conversations"]["resident"])
    return json_response(view)


async def page(request: web.Request) -> web.Response:
    """The live page: static, it reads the JSON views above from the browser."""
    if request.path == "/debug":
        raise web.HTTPFound("/debug/")
    return web.Response(body=PAGE.read_bytes(), content_type="text/html", charset="utf-8")


async def directory(request: web.Request) -> web.Response:
    """The core's live view: resident, loading, retiring and restarting conversations."""
    return json_response(await request.app[ROUTER].inspect("core"))


async def poisoned_event_list(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    limit, cursor = _page(request)
    after = row_id(cursor, "cursor") if cursor else 0
    rows = await router.store.read_aside(lambda c: poisoned_events(c, limit + 1, after))
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


FILTERS = {"status": ("open", "closed"), "route": ("bot", "ccsp", "flow")}


def conversation_filter(request: web.Request) -> ConversationFilter:
    for name, allowed in FILTERS.items():
        value = request.query.get(name)
        if value is not None and value not in allowed:
            raise bad_request(f"{name} must be one of {', '.join(allowed)}")
    q = request.query
    return ConversationFilter(q.get("status"), q.get("route"), q.get("integration"), q.get("user"))


async def conversations(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    limit, cursor = _page(request)
    wanted = conversation_filter(request)
    items = await router.store.read_aside(
        lambda c: find_conversations(c, wanted, limit + 1, cursor)
    )
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
    found = await router.store.read_aside(lambda c: get_conversation(c, cid))
    if found is None:
        raise InputError(404, "unknown_conversation", f"no conversation {cid!r}")
    deliveries = await router.store.read_aside(lambda c: conversation_deliveries(c, cid))
    messages = await router.store.read_aside(lambda c: transcript(c, cid))
    sessions = await router.store.read_aside(lambda c: agent_sessions(c, cid))
    return json_response(
        {
            **conversation_view(found),
            "transcript": list(messages),
            "deliveries": [delivery_view(d) for d in deliveries if d.status != "dead"],
            "dead_letters": [delivery_view(d) for d in deliveries if d.status == "dead"],
            "agent_sessions": [
                {**s, "updated_at": iso_timestamp(s["updated_at"])} for s in sessions
            ],
            # The actor itself while it is resident: mailbox, lanes, timers, recent events.
            "live": router.conversation_live(cid),
        }
    )


async def dead_letter_list(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    limit, cursor = _page(request)
    after = row_id(cursor, "cursor") if cursor else 0
    items = await router.store.read_aside(lambda c: dead_letters(c, limit + 1, after))
    page = items[:limit]
    return json_response(
        {
            "dead_letters": [
                {**delivery_view(d), "conversation_id": d.conversation_id} for d in page
            ],
            "next_cursor": str(page[-1].delivery_id) if len(items) > limit else None,
        }
    )
