"""Who may read the debug port, and what it never shows.

The debug port serves transcripts, delivery bodies and the router's inner state. With
`[debug] token` set (required off loopback), every path but `/healthz` and `/metrics`, which
monitors scrape, and the live page's own HTML, which must load to ask for the token, needs
`Authorization: Bearer <token>`. Whatever the bind, its views never carry a secret: a
webhook URL's token, or a password or query in a configured URL, is masked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from router.http.inbound import InputError
from router.http.util import Handler, bearer_matches

__all__ = ["MASK", "OPEN_PATHS", "debug_token_middleware", "mask_url", "mask_webhook_url"]

MASK = "****"
# Monitors and the page that asks for the token: open whatever the bind.
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/debug", "/debug/"})
UNAUTHORIZED = "the debug port needs its token: Authorization: Bearer <debug.token>"


def debug_token_middleware(token: Callable[[], str | None]) -> Any:
    """Checks `token()` on every request, so a running daemon always uses its config's."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = token()
        guarded = expected is not None and request.path not in OPEN_PATHS
        # Constant time, like every token the router checks.
        if guarded and not bearer_matches(request, expected or ""):
            raise InputError(401, "unauthorized", UNAUTHORIZED)
        return await handler(request)

    return middleware


def mask_webhook_url(url: str) -> str:
    """`…/v1/bots/{id}/{token}` with the token masked: the id tells the operator which one,
    the token would let anyone post as the bot."""
    head, slash, _ = url.rpartition("/")
    return f"{head}{slash}{MASK}" if slash else mask_url(url)


def mask_url(url: str) -> str:
    """A configured URL with its password and query values masked; keys are kept, so the
    operator still sees which parameters it has."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{host}"
    query = "&".join(
        f"{pair.partition('=')[0]}={MASK}" if "=" in pair else MASK
        for pair in parts.query.split("&")
        if pair
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
