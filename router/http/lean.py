"""The lean path for the public port's busiest request: a customer's channel event.

Through aiohttp a request costs more of the loop than routing the event it carries: a request
object, a response object, a turn of each middleware. So a connection whose next read holds
exactly one whole, plain `POST /v1/channels/{asset_id}/events` is served here instead:

- HTTP/1.1; an asset id of unreserved characters only (nothing to decode); no query;
- every header line well formed, the head within aiohttp's own limits and the port's
  `server.max_header_bytes`;
- one `Content-Length`, within `server.max_body_bytes`, and the body whole in the same read,
  with nothing after it;
- one `Host`; no header twice but `X-Forwarded-For`; no `Transfer-Encoding`, `Expect`,
  `Upgrade`, `Content-Encoding` or `Proxy-Connection`; `Connection` absent, `keep-alive` or
  `close`;
- on a connection whose every earlier request was served here too: once aiohttp's parser has
  read a byte of a connection, only it knows where the next request starts.

It passes the same checks in the same order as through aiohttp (`router.http.admission`, the
store gate, the door's token, rate and body checks), runs the same door
(`router.http.public.channel_door`), is counted the same way and gets the same answers, written
to the connection in turn with any others. Anything else (a request split over reads, a
pipelined pair, any header the rules above leave out) goes to aiohttp, byte for byte.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from router.http.admission import Admission, IntakeRates
from router.http.connections import peer_address
from router.http.guard import http_answer
from router.http.public import channel_door, tallied
from router.http.util import as_input_error, decode_json, error_body

if TYPE_CHECKING:
    from router.daemon import Router

__all__ = ["LeanChannelEvents", "LeanRequest", "parse_request"]

_AIOHTTP_MAX_LINE = 8190  # aiohttp's limits on a line and on a field, the larger goes there
_AIOHTTP_MAX_HEADERS = 128
_MAX_LENGTH_DIGITS = 12

_REQUEST_LINE = re.compile(rb"POST /v1/channels/([A-Za-z0-9._~-]+)/events HTTP/1\.1\r\n")
# A header line: a token, a colon, a value without control characters (a tab allowed); the
# value's surrounding blanks are stripped where it is read.
_FIELD = rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([^\x00-\x08\x0a-\x1f\x7f]*)\r\n"
_FIELDS = re.compile(rb"(?:" + _FIELD + rb")*")
_ONE_FIELD = re.compile(_FIELD)
_BLANKS = b" \t"
# Headers that make a request anything but plain; aiohttp knows what to do with each.
_NOT_PLAIN = frozenset(
    {
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"content-encoding",
        b"proxy-connection",
        b"sec-websocket-key1",
    }
)


class LeanRequest(NamedTuple):
    asset_id: str
    authorization: str
    forwarded: list[str]
    length: int
    body: bytes
    close: bool

    @property
    def path(self) -> str:
        return f"/v1/channels/{self.asset_id}/events"

    async def read(self) -> Any:
        return decode_json(self.body)


def parse_request(data: bytes, max_head: int, max_body: int) -> LeanRequest | None:
    """The request `data` holds, when it is one the lean path serves (see above); else None."""
    line = _REQUEST_LINE.match(data)
    if line is None:
        return None
    end = data.find(b"\r\n\r\n", line.end() - 2)
    if end < 0 or end > min(max_head, _AIOHTTP_MAX_LINE):
        return None
    head = data[line.end() : end + 2]
    if _FIELDS.fullmatch(head) is None:
        return None
    fields = _ONE_FIELD.findall(head)
    if len(fields) > _AIOHTTP_MAX_HEADERS:
        return None
    length: int | None = None
    authorization = b""
    forwarded: list[str] = []
    close = False
    seen: set[bytes] = set()
    for name, raw in fields:
        key = name.lower()
        value = raw.strip(_BLANKS)
        if key in seen and key != b"x-forwarded-for":
            return None  # aiohttp refuses some twice; it may say which
        seen.add(key)
        if key == b"content-length":
            if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif key == b"authorization":
            authorization = value
        elif key == b"x-forwarded-for":
            forwarded.append(value.decode("utf-8", "surrogateescape"))
        elif key == b"connection":
            token = value.lower()
            if token == b"close":
                close = True
            elif token != b"keep-alive":
                return None
        elif key in _NOT_PLAIN:
            return None
    body = data[end + 4 :]
    if length is None or length != len(body) or length > max_body or b"host" not in seen:
        return None
    return LeanRequest(
        line.group(1).decode("ascii"),
        authorization.decode("utf-8", "surrogateescape"),
        forwarded,
        length,
        body,
        close,
    )


class LeanChannelEvents:
    """The lean path of one public port (`router.http.guard.Lean`)."""

    def __init__(
        self,
        router: Router,
        admission: Admission,
        rates: IntakeRates,
        max_head: int,
        on_error: Callable[[int], None],
    ) -> None:
        self.router = router
        self.admission = admission
        self.rates = rates
        self.max_head = max_head
        self.on_error = on_error

    def take(
        self, data: bytes, transport: asyncio.Transport
    ) -> Coroutine[Any, Any, tuple[bytes, bool]] | None:
        request = parse_request(data, self.max_head, self.admission.max_body)
        if request is None:
            return None
        return self.answer(request, peer_address(transport))

    async def answer(self, request: LeanRequest, peer: str) -> tuple[bytes, bool]:
        """What aiohttp's middlewares (`error_middleware`, the admission, the store gate) and
        the door's count would make of it: the answer's bytes, and whether to close."""
        admission = self.admission
        admission.enter()
        try:
            status, answer = await self._serve(request, peer)
            return http_answer(status, orjson.dumps(answer), close=request.close), request.close
        except Exception as exc:
            error = as_input_error(exc, "POST", request.path)
            self.on_error(error.status)
            close = request.close or error.close
            body = error_body(error.code, error.message)
            return http_answer(error.status, body, error.headers, close=close), close
        finally:
            admission.leave()

    async def _serve(self, request: LeanRequest, peer: str) -> tuple[int, dict[str, bool]]:
        admission = self.admission
        address = admission.client_address(peer, request.forwarded)
        refused = admission.refusal_of("", request.length, address)
        if refused is not None:
            raise refused
        router = self.router
        door = partial(
            channel_door, router, self.rates, request.asset_id, request.authorization, request.read
        )
        return await router.store_gate.passing(
            "POST", request.path, partial(tallied, router, "channel", door)
        )
