"""JSON in and out of the HTTP doors, and the middleware that keeps every error JSON."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from router.inbound import InputError, bad_request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_bytes_response(data, dumps=orjson.dumps, status=status)


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": code, "message": message}, status=status)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; a body over the size limit is 413, anything unreadable 400."""
    body = await request.read()
    if not body:
        raise bad_request("the body is empty; a JSON object is expected", "invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", "invalid_json") from None


def bearer_matches(request: web.Request, expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def require_bearer(request: web.Request, expected: str) -> None:
    if not bearer_matches(request, expected):
        raise InputError(401, "unauthorized", "a valid Authorization: Bearer token is required")


def token_matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def error_middleware(on_error: Callable[[int], None]) -> Any:
    log = structlog.get_logger("router.http")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except InputError as exc:
            on_error(exc.status)
            return error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            on_error(exc.status)
            code = _STATUS_CODES.get(exc.status, "http_error")
            message = exc.reason
            if exc.status == 413:
                message = f"the body is larger than the limit of {request.client_max_size} bytes"
            return error_response(exc.status, code, message)
        except Exception:
            log.exception("request_failed", method=request.method, path=request.path)
            on_error(500)
            return error_response(500, "internal_error", "the request could not be handled")

    return middleware
