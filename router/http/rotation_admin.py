"""Replacing a bot's secrets over the admin API while the old ones stay good for an overlap:
a new webhook token, and the overlap a PATCH of its access token or signing secret gets.
`GET /v1/admin/secrets` says which secrets are in overlap and until when, never a value."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.config.shapes import MAX_SECRET_OVERLAP_S
from router.http.inbound import InputError, bad_request
from router.http.util import json_response, read_json

if TYPE_CHECKING:
    from router.daemon import Router
    from router.io.integrations import Integration


def overlap_from(body: Any) -> float | None:
    """The request's `overlap_s`, if it has one: 0 ends the old value at once (it leaked)."""
    if not isinstance(body, dict) or body.get("overlap_s") is None:
        return None
    value = body["overlap_s"]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_SECRET_OVERLAP_S
    ):
        raise bad_request(f"overlap_s must be a number of seconds from 0 to {MAX_SECRET_OVERLAP_S}")
    return float(value)


async def replace_webhook_token(
    request: web.Request, router: Router, integration: Integration
) -> Integration:
    """`POST /v1/admin/integrations/{id}/webhook_token`: the bot with its new token, whose
    URL the answer shows; the old one keeps working for the overlap. KeyError: deleted."""
    body = await read_json(request) if request.can_read_body else {}
    if not isinstance(body, dict) or set(body) - {"overlap_s"}:
        raise bad_request('the body must be empty or {"overlap_s": seconds}')
    overlap = overlap_from(body)
    configured = next((i for i in router.config.integrations if i.id == integration.id), None)
    if configured is not None and configured.webhook_token is not None:
        raise InputError(
            409,
            "defined_in_config",
            f"{integration.id!r} has its webhook_token in {router.config.source}; "
            "change it there and reload",
        )
    async with router.reloading:  # one change of secrets at a time, reloads included
        before = router.rotation.slots()
        updated = await router.integrations.new_webhook_token(integration.id)  # KeyError: gone
        await router.rotation.changed(before, overlap)
    return updated


def secrets_view(router: Router) -> web.Response:
    return json_response({"overlaps": router.rotation.overlaps.view(router.clock.now())})
