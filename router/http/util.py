"""JSON in and out of the HTTP doors, and the middleware that keeps every error JSON."""

from __future__ import annotations

import hmac
import itertools
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
import structlog
from aiohttp import web

from router.http.inbound import InputError, bad_request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_JSON_DEPTH = 64

_log = structlog.get_logger("router.http")

_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
}

# The last segment of a webhook path is the caller's secret.
_WEBHOOK_PATH = re.compile(r"^(/v1/(?:bots|ccsp)/[^/]*/).+", re.DOTALL)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_bytes_response(data, dumps=orjson.dumps, status=status)


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_bytes_response(
        body=error_body(code, message), dumps=orjson.dumps, status=status
    )


def error_body(code: str, message: str) -> bytes:
    """Every error answer's body, through aiohttp or written straight to a connection."""
    return orjson.dumps({"error": code, "message": message})


def status_code(status: int) -> str:
    """The error code for an HTTP status that no handler chose a code for."""
    return _STATUS_CODES.get(status, "http_error")


class BodyTimeout(Exception):
    """The request's body did not arrive within the body deadline (`server.body_timeout_s`);
    set on its payload by the connection guard, so whoever reads the body hears of it."""


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; a body over the size limit is 413, one that does not arrive in
    time 408, anything unreadable 400."""
    try:
        body = await request.read()
    except BodyTimeout as exc:
        raise InputError(408, "body_timeout", str(exc), close=True) from None
    except (web.RequestPayloadError, ConnectionResetError) as exc:
        # A broken body or a caller gone mid-body is the caller's doing, not a server fault.
        raise bad_request(f"the body could not be read: {exc}", "invalid_body") from None
    return decode_json(body)


def decode_json(body: bytes) -> Any:
    """A body's JSON, or a 400 that says why not: empty, not JSON (invalid UTF-8 included), or
    nested past the limit."""
    if not body:
        raise bad_request("the body is empty; a JSON object is expected", "invalid_json")
    if nests_too_deep(body):  # before parsing: a deep document builds nothing
        raise bad_request(
            f"the body nests arrays and objects deeper than the limit of {MAX_JSON_DEPTH}",
            "invalid_json",
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", "invalid_json") from None


# A JSON string, escapes and all (the unrolled form, so long strings cost one scan).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # an opener +1, a closer -1, below


def nests_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays and objects of a JSON text nest deeper than `limit`, read from its
    bytes before it is parsed (for valid JSON, `json_depth(parsed) > limit`).

    Strings go first (a bracket inside one is text), then everything but brackets, both in
    C. A body with no more openers than the limit cannot nest deeper, which is every body
    but a hostile one; only those are walked, in time linear in their size.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # not even counting those inside strings
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    depth = itertools.accumulate(step - 1 for step in brackets.translate(_STEPS))
    return any(level > limit for level in depth)


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest (a scalar is 0, `[]` is 1).

    Walked with an explicit stack so that a hostile document cannot exhaust the interpreter's
    recursion limit here or in whatever later serialises it.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break  # already too deep: no need to walk the rest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _utf8(text: str) -> bytes | None:
    """Header values arrive with undecodable bytes as surrogates; those match no token."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None


# A secret, or while it is being replaced the values in force (see router.rotation).
Expected = str | tuple[str, ...]


def _matches(given: bytes, expected: Expected) -> bool:
    """Compared with every candidate, in constant time each, without stopping at a match."""
    candidates = (expected,) if isinstance(expected, str) else expected
    return any([hmac.compare_digest(given, candidate.encode()) for candidate in candidates])


def bearer_matches(request: web.Request, expected: Expected) -> bool:
    return bearer_in(request.headers.get("Authorization", ""), expected)


def bearer_in(header: str, expected: Expected) -> bool:
    """Whether an `Authorization` header's value carries one of the expected bearer tokens."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = _utf8(token.strip())
    return given is not None and _matches(given, expected)


def require_bearer(request: web.Request, expected: Expected) -> None:
    if not bearer_matches(request, expected):
        raise InputError(401, "unauthorized", "a valid Authorization: Bearer token is required")


def token_matches(given: str, expected: Expected | None) -> bool:
    if expected is None:
        return False
    encoded = _utf8(given)
    return encoded is not None and _matches(encoded, expected)


def redact_path(path: str) -> str:
    """The path with a webhook token (and anything after it) replaced, so logs never carry one.

    Everything after the id goes, because the path is decoded: an encoded slash inside a
    token would otherwise leave part of it behind.
    """
    return _WEBHOOK_PATH.sub(r"\1***", path)


def webhook_url(base: str, kind: str, item_id: str, token: str) -> str:
    """Where a bot or CCSP posts; ids from the config file may hold any character, so each
    segment is percent-encoded whole."""
    return f"{base}/v1/{kind}/{quote(item_id, safe='')}/{quote(token, safe='')}"


def as_input_error(exc: Exception, method: str, path: str) -> InputError:
    """The answer an exception out of a door gets: its own if it is one, else a logged 500."""
    if isinstance(exc, InputError):
        return exc
    _log.error("request_failed", method=method, path=redact_path(path), exc_info=exc)
    return InputError(500, "internal_error", "the request could not be handled")


def error_middleware(on_error: Callable[[int], None]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            on_error(exc.status)
            code = status_code(exc.status)
            message = exc.reason
            if exc.status == 413:
                message = f"the body is larger than the limit of {request.client_max_size} bytes"
            return error_response(exc.status, code, message)
        except Exception as exc:
            error = as_input_error(exc, request.method, request.path)
            on_error(error.status)
            response = error_response(error.status, error.code, error.message)
            response.headers.update(error.headers)
            if error.close:
                response.force_close()
            return response

    return middleware
