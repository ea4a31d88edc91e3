"""Callers that must sign: a bot or CCSP with `signed_calls` proves each call with the same
Standard Webhooks signature the router puts on its deliveries, besides its webhook token.

The time is the router's own clock, so a call more than five minutes off is refused however
the machine's clock stands, and tests can drive it.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from router.http.inbound import InputError, bad_request
from router.io.signing import webhook_headers

TOLERANCE_S = 300


def _refused(message: str) -> InputError:
    return InputError(401, "invalid_signature", message)


def verify_caller(request: web.Request, raw: bytes, secrets: tuple[str, ...], now: float) -> str:
    """The call's `webhook-id` once its signature holds under one of `secrets` (the current
    one, and any being replaced); a 401 that says why otherwise."""
    webhook_id = request.headers.get("webhook-id", "")
    stamp = request.headers.get("webhook-timestamp", "")
    given = request.headers.get("webhook-signature", "")
    if not (webhook_id and stamp and given):
        raise _refused("webhook-id, webhook-timestamp and webhook-signature are required")
    if not stamp.isdigit():
        raise _refused("webhook-timestamp must be Unix seconds")
    if abs(now - int(stamp)) > TOLERANCE_S:
        raise _refused("webhook-timestamp is more than 5 minutes from the router's clock")
    try:
        expected = [
            webhook_headers(webhook_id, int(stamp), raw, secret)["webhook-signature"]
            for secret in secrets
        ]
    except UnicodeDecodeError:
        raise bad_request("the body is not UTF-8 text", "invalid_json") from None
    # The header may carry several signatures (the caller's secret being replaced): any one
    # that matches any secret in force will do.
    if not any(hmac.compare_digest(e, one) for e in expected for one in given.split()):
        raise _refused("the signature does not match")
    return webhook_id
