"""Erasing one customer: `DELETE /v1/admin/customers/{asset_id}/{Userid}`.

A customer is a user of one asset (the channel's own id for the person). Everything the
router keeps about them goes, open conversations included, and the answer says how much:
conversations, their inbound events, deliveries still owed and dead letters, transcript
entries, agent sessions and the Messageids sent to them. Nobody else is told: bots, CCSPs
and the channel keep their own copies. `404` when the router knew nothing of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from router.http.inbound import CHANNEL_EVENTS, InputError
from router.http.public import ROUTER
from router.http.util import json_response, require_bearer

if TYPE_CHECKING:
    from router.daemon import Router

__all__ = ["ERASED", "customer_routes"]

# Every count the answer carries, 0 included.
ERASED = (
    "conversations",
    "events",
    "deliveries",
    "dead_letters",
    "transcript_entries",
    "agent_sessions",
    "outbound_messages",
)


def customer_routes(app: web.Application) -> None:
    # The Userid is the rest of the path: a channel's ids may hold any character.
    app.router.add_delete("/v1/admin/customers/{asset_id}/{user_id:.+}", erase_customer)


def _admin(request: web.Request) -> Router:
    router = request.app[ROUTER]
    require_bearer(request, router.admin_tokens())
    return router


async def erase_customer(request: web.Request) -> web.Response:
    router = _admin(request)
    asset, user = request.match_info["asset_id"], request.match_info["user_id"]
    erased = await router.erase_customer(asset, user, tuple(CHANNEL_EVENTS.values()))
    if not any(erased.values()):
        raise InputError(404, "unknown_customer", f"nothing is kept about that user of {asset!r}")
    return json_response({"asset": asset, "Userid": user, **{k: erased[k] for k in ERASED}})
