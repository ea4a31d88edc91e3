"""Errors that aiohttp answers itself, before any handler runs, answered as JSON too.

A malformed request line, a header without a colon, a bad chunk size or an invalid method
never reach the application or its middleware: aiohttp's protocol answers them in
`RequestHandler.handle_error`, as text, and logs them with a traceback. Neither suits a
client's mistake. aiohttp offers no setting for the protocol class, so the runner builds a
server whose protocols override `handle_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong

from router.http.util import error_response, redact_path

OnError = Callable[[int], None]

MAX_REASON_CHARS = 200

_log = structlog.get_logger("router.http")


def _ignore(status: int) -> None:
    """For a door that keeps no error metrics."""


class JsonErrorProtocol(web.RequestHandler):
    """aiohttp's HTTP protocol, with its own error answers in the router's JSON shape."""

    __slots__ = ("_on_error",)

    def __init__(self, manager: web.Server, *, on_error: OnError, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._on_error = on_error

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer is out already; aiohttp drops the connection on this.
            raise ConnectionError("an answer was already started; cannot send an error")
        if status == 400 and _too_large(exc):
            status = 431
        self._on_error(status)
        if status >= 500:
            _log.error(
                "request_failed",
                method=request.method,
                path=redact_path(request.path),
                exc_info=exc,
            )
            response = error_response(status, "internal_error", "the request could not be handled")
        else:
            # The client's mistake: worth a line, not a traceback. The reason text can quote
            # the request line (and a webhook token in it), so only its type is logged.
            _log.info("malformed_request", status=status, reason=type(exc).__name__)
            code = "headers_too_large" if status == 431 else "invalid_http"
            response = error_response(status, code, _describe(exc, message))
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body that breaks after its answer was sent (aiohttp drains the rest of it) is
        the client's fault too: one line, no traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | HttpProcessingError):
            _log.info("malformed_body", reason=type(exc).__name__)
            return
        super().log_exception(*args, **kw)


def _too_large(exc: BaseException | None) -> bool:
    """A header line past aiohttp's limit, or too many of them: the headers are too large,
    not malformed."""
    if isinstance(exc, LineTooLong):
        return True
    return isinstance(exc, BadHttpMessage) and "Too many headers" in (exc.message or "")


def _describe(exc: BaseException | None, message: str | None) -> str:
    """aiohttp's reason in one short line: its messages add the raw bytes and a caret below."""
    if isinstance(exc, HttpProcessingError) and exc.message:
        text = exc.message
    else:
        text = message or "the request could not be parsed"
    first = text.strip().splitlines()[0].rstrip(":") if text.strip() else "unknown error"
    if len(first) > MAX_REASON_CHARS:
        first = first[: MAX_REASON_CHARS - 3] + "..."
    return f"the request is not valid HTTP: {first}"


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, making `JsonErrorProtocol`s instead of its own."""

    def __init__(
        self,
        handler: Any,
        *,
        on_error: OnError,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, loop=loop, **kwargs)
        self.on_error = on_error

    def __call__(self) -> web.RequestHandler:
        return JsonErrorProtocol(self, on_error=self.on_error, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """An `AppRunner` whose server answers malformed requests as JSON."""

    __slots__ = ("_on_error",)

    def __init__(self, app: web.Application, *, on_error: OnError = _ignore, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._on_error = on_error

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return JsonErrorServer(
            made.request_handler,
            on_error=self._on_error,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
