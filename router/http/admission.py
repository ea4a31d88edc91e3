"""What every request on the public port passes before any work is done for it.

From the headers alone, in this order:

1. the daemon is stopping: `503 stopping`, with `Retry-After`;
2. the body is compressed (any `Content-Encoding` but `identity`): `415`. aiohttp would
   inflate it as it arrives, before any handler could check a token; the daemon is set not
   to, and refuses it instead;
3. its `Content-Length` is over `server.max_body_bytes`: `413`;
4. its client has made more requests than `limits.address_rate_per_s` allows: `429
   rate_limited`, with `Retry-After`. The client is the socket's peer, or, when that peer
   is one of `server.trusted_proxies`, the address its `X-Forwarded-For` names.

The same checks answer a request that sent `Expect: 100-continue` before the `100` goes out,
so a client is never invited to send a body that would be refused. Authentication and the
per-asset, per-integration and per-CCSP rates come next, in the doors (`router.http.public`).

The middleware also counts the requests under way, so that a stop can let them finish.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from router.config.settings import LimitsConfig, ServerConfig
from router.domain.rate_limit import RateLimiter, retry_after
from router.http.inbound import InputError
from router.http.util import Handler, error_response, status_code
from router.io.clock import Clock

__all__ = ["Admission", "IntakeRates", "guard_expectations", "rate_limited"]

_CHECKED = web.RequestKey("admission_checked", bool)
_IDENTITY = frozenset({"", "identity"})
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Admission:
    def __init__(
        self, server: ServerConfig, clock: Clock, limits: Callable[[], LimitsConfig]
    ) -> None:
        self.max_body = server.max_body_bytes
        self.proxies: tuple[Network, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in server.trusted_proxies
        )
        self.retry_after = retry_after(server.stop_grace_s)
        self.clock = clock
        self.limits = limits  # read at each request: a reload applies to the next one
        self.addresses = RateLimiter()
        self.stopping = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the checks ----------------------------------------------------------------------

    def refusal(self, request: web.BaseRequest) -> InputError | None:
        """The first check the request fails, from its headers alone; counted once."""
        if request.get(_CHECKED) and not self.stopping:
            return None
        request[_CHECKED] = True
        forwarded = request.headers.getall("X-Forwarded-For", []) if self.proxies else []
        return self.refusal_of(
            request.headers.get("Content-Encoding", ""),
            request.content_length,
            self.client_address(request.remote or "", forwarded),
        )

    def refusal_of(self, encoding: str, length: int | None, address: str) -> InputError | None:
        """The checks above, in their order, for a request with this `Content-Encoding`,
        length and client address; a request that passes takes its place under the
        address's rate."""
        if self.stopping:
            return InputError(
                503,
                "stopping",
                "the router is stopping; send it again shortly",
                headers={"Retry-After": str(self.retry_after)},
                close=True,
            )
        encoding = encoding.strip().lower()
        if encoding not in _IDENTITY:
            return InputError(
                415,
                "unsupported_encoding",
                f"Content-Encoding {encoding[:40]!r} is not accepted; send the body as is",
                close=True,
            )
        if length is not None and length > self.max_body:
            return InputError(
                413,
                status_code(413),
                f"the body is larger than the limit of {self.max_body} bytes",
                close=True,
            )
        limits = self.limits()
        wait = self.addresses.take(
            address, self.clock.now(), limits.address_rate_per_s, limits.address_burst
        )
        if wait > 0:
            return rate_limited("this address", wait)
        return None

    def client_address(self, peer: str, forwarded: list[str]) -> str:
        """The socket's peer, or, behind a trusted proxy, the nearest address in
        `X-Forwarded-For` (all its `forwarded` values) that is not one of the trusted
        proxies."""
        if not self.proxies or not self._trusted(peer):
            return peer
        hops = [hop.strip() for hop in ",".join(forwarded).split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False  # not an address at all: whoever wrote it is not trusted
        return any(ip in network for network in self.proxies)

    # -- in aiohttp ----------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.enter()
        try:
            refused = self.refusal(request)
            if refused is not None:
                raise refused
            return await handler(request)
        finally:
            self.leave()

    def enter(self) -> None:
        """A request is under way (a stop lets it finish); `leave` once it is answered."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Before `100 Continue`: the checks above, answered at once, body unsent."""
        refused = self.refusal(request)
        if refused is None:
            try:
                await _default_expect_handler(request)
            except web.HTTPExpectationFailed:
                refused = InputError(
                    417, "expectation_failed", "only Expect: 100-continue is understood"
                )
            else:
                return None
        response = error_response(refused.status, refused.code, refused.message)
        response.headers.update(refused.headers)
        response.force_close()  # the body was never invited; the connection cannot go on
        return response

    # -- stopping ------------------------------------------------------------------------

    async def drain(self, grace: float) -> bool:
        """Refuse new requests from now on; True once none is under way, False if some still
        are after `grace` seconds."""
        self.stopping = True
        if self.in_flight == 0:
            return True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def rate_limited(who: str, wait: float) -> InputError:
    seconds = retry_after(wait)
    return InputError(
        429,
        "rate_limited",
        f"{who} is over its request rate; try again in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


def guard_expectations(app: web.Application, expect: Any) -> None:
    """Every route of `app` answers `Expect` through `expect`. aiohttp takes an expect handler
    per route, when it is added; the admin routes are added elsewhere, so they are set here,
    once all are in."""
    for route in app.router.routes():
        route._expect_handler = expect  # aiohttp's own per-route attribute


class IntakeRates:
    """Per asset, integration and CCSP, counted once the caller is authenticated: a caller
    that is not cannot spend another's allowance."""

    def __init__(self, clock: Clock, limits: Callable[[], LimitsConfig]) -> None:
        self.clock = clock
        self.limits = limits
        self.buckets = {kind: RateLimiter() for kind in ("asset", "integration", "ccsp")}

    def check(self, kind: str, item_id: str) -> None:
        """Raise `429 rate_limited` when `item_id` (of `kind`) is over its rate."""
        limits = self.limits()
        rate, burst = {
            "asset": (limits.asset_rate_per_s, limits.asset_burst),
            "integration": (limits.integration_rate_per_s, limits.integration_burst),
            "ccsp": (limits.ccsp_rate_per_s, limits.ccsp_burst),
        }[kind]
        wait = self.buckets[kind].take(item_id, self.clock.now(), rate, burst)
        if wait > 0:
            raise rate_limited(f"this {'CCSP' if kind == 'ccsp' else kind}", wait)
