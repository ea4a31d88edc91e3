"""Deadlines on each connection: its request's headers, then its body.

aiohttp reads a request for as long as its client takes to send it. A client that sends its
headers a byte a second, or never finishes its body, holds a connection (and a file
descriptor) for as long as it likes, and a few hundred such clients take them all. So each
connection runs two deadlines, one at a time:

- headers: from when the connection opens, or its previous answer went out, until a request's
  headers are complete (`header_timeout_s`). An idle keep-alive connection is closed by the
  same deadline. While it runs, the bytes received count against `max_header_bytes`.
- body: from the headers until the body is complete (`body_timeout_s`). A handler waiting for
  the body gets `BodyTimeout` (answered `408`); a body nobody reads any more ends the
  connection.

Each connection's counting ticket (see `router.http.connections`) is returned when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.streams import StreamReader

from router.http.errors import JsonErrorProtocol, OnError
from router.http.quiet import ThrottledLog
from router.http.util import BodyTimeout, error_body
from router.io.deadline import LazyDeadline

__all__ = ["Guard", "GuardedProtocol", "Lean", "Ticket", "canned_answer", "http_answer"]

_log = structlog.get_logger("router.http")
_HEADERS, _REQUEST = "headers", "request"
_NONE: Mapping[str, str] = {}
_HELD_MAX = 64 * 1024  # bytes of a pipelined request held while a lean one is answered


class Ticket(Protocol):
    """A connection's place under the caps; released once, however the connection ends."""

    def release(self) -> None: ...


class Lean(Protocol):
    """A path that serves some requests without aiohttp (`router.http.lean`)."""

    def take(
        self, data: bytes, transport: asyncio.Transport
    ) -> Awaitable[tuple[bytes, bool]] | None:
        """None unless `data` is one whole request it serves; else its answer, and whether
        the connection closes after it."""
        ...


@dataclass
class Guard:
    """What one listener allows each of its connections, and how it reports what it cuts."""

    port: str  # "public" or "debug": in metrics and log lines
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    count: Callable[[str, str], None] = lambda port, reason: None  # (port, reason) -> metrics
    _logs: dict[str, ThrottledLog] = field(default_factory=dict)

    def closed(self, reason: str) -> None:
        """One connection refused or cut short: counted always, logged once per interval."""
        self.count(self.port, reason)
        log = self._logs.get(reason)
        if log is None:
            log = self._logs[reason] = ThrottledLog("connections_closed")
        log.hit(port=self.port, reason=reason)


def canned_answer(status: int, code: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP answer in the router's JSON shape, for a connection that has no request
    aiohttp could answer (none yet, or one too slow or too large to finish)."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return http_answer(status, error_body(code, message), headers, close=True)


def http_answer(
    status: int, body: bytes, headers: Mapping[str, str] = _NONE, *, close: bool = False
) -> bytes:
    """A whole HTTP/1.1 answer with a JSON body, headed as aiohttp heads its own (its `Date`
    too, from the same once-a-second cache)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    closing = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\nDate: {rfc822_formatted_time()}\r\n"
        f"Server: {SERVER_SOFTWARE}\r\n"
        f"{closing}\r\n"
    ).encode("latin-1") + body


class GuardedProtocol(JsonErrorProtocol):
    """aiohttp's protocol (with JSON errors), under the header and body deadlines; a
    request the `lean` path takes is answered by it instead, in turn with the others."""

    __slots__ = (
        "_deadline",
        "_guard",
        "_header_bytes",
        "_held",
        "_held_bytes",
        "_lean",
        "_lean_task",
        "_phase",
        "_ticket",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: Guard,
        ticket: Ticket,
        on_error: OnError,
        lean: Lean | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(manager, on_error=on_error, **kw)
        self._guard = guard
        self._ticket = ticket
        self._lean = lean
        self._deadline = LazyDeadline(self._loop)
        self._phase = _HEADERS
        self._header_bytes = 0
        # While a lean request is answered: the bytes that came after it, and its task.
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        self._lean_task: asyncio.Task[None] | None = None

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self._force_close:
            # Over TLS, the first bytes can arrive before the connection is handed over, and
            # can already have been too many: nothing is left to do but close.
            transport.close()
            return
        self._await_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._deadline.cancel()  # nothing left for it to guard: free the connection now
        try:
            super().connection_lost(exc)
        finally:
            self._ticket.release()

    def data_received(self, data: bytes) -> None:
        if self._held is not None:  # the next request waits for the lean one's answer
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > _HELD_MAX and not self._buffer_paused:
                self._pause_reading_for_buffer()
            return
        if self._lean is not None and self.transport is not None:
            if (
                self._phase == _HEADERS
                and not (self._messages or self._request_in_progress or self._close)
                and not self._force_close
            ):
                answer = self._lean.take(data, self.transport)
                if answer is not None:
                    self._serve_lean(answer)
                    return
            # aiohttp's parser keeps what it has read of a request; once it has read any
            # byte, only it knows where the next request starts.
            self._lean = None
        if self._phase == _HEADERS:
            self._header_bytes += len(data)
        before = self._request_count
        super().data_received(data)
        if self._phase != _HEADERS:
            return
        parsed = self._request_count - before
        if parsed > 0:
            self._phase = _REQUEST
            self._deadline.clear()
            _, payload = self._messages[-parsed]  # the first request of this read
            if not payload.is_eof():
                self._deadline.arm(
                    self._loop.time() + self._guard.body_timeout,
                    partial(self._body_late, payload),
                )
                payload.on_eof(self._deadline.clear)
        elif self._header_bytes > self._guard.max_header_bytes:
            limit = self._guard.max_header_bytes
            self._cut(
                "headers_too_large",
                canned_answer(
                    431, "headers_too_large", f"the request's headers exceed {limit} bytes"
                ),
            )

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if resp.keep_alive:
            # The next request's deadline starts once this one's body is in (at once, if it
            # is): bytes of this body are not the next request's headers.
            request.content.on_eof(self._await_headers)
        return answered

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """A lean request under way gets what aiohttp gives its own: `timeout`, then cut."""
        task = self._lean_task
        if task is not None:
            await asyncio.wait([task], timeout=timeout)
            task.cancel()
        await super().shutdown(timeout)

    def _process_keepalive(self) -> None:
        if self._held is not None:  # a lean request is under way: the connection is not idle
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        super()._process_keepalive()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), BodyTimeout):
            return  # already counted by `_body_late`
        super().log_exception(*args, **kw)

    # -- the lean path -------------------------------------------------------------------

    def _serve_lean(self, answer: Awaitable[tuple[bytes, bool]]) -> None:
        self._deadline.clear()
        self._phase = _REQUEST
        self._request_count += 1
        self._held = []
        self._lean_task = self._loop.create_task(self._answer_lean(answer))

    async def _answer_lean(self, answer: Awaitable[tuple[bytes, bool]]) -> None:
        go_on = False
        try:
            written, close = await answer
            transport = self.transport
            if transport is not None and not self._force_close:
                transport.write(written)
                if close:
                    self.force_close()  # closes once the answer is written
                else:
                    if self._paused:  # a client that does not read waits, as aiohttp makes it
                        await self._drain_helper()
                    go_on = True
        except ConnectionResetError:
            pass  # gone while its answer waited to be written
        except Exception as exc:  # `answer` turns every error into one; this is a bug
            _log.error("request_failed", method="POST", path="(lean)", exc_info=exc)
            self.force_close()
        finally:
            self._lean_task = None
            held, self._held, self._held_bytes = self._held, None, 0
        if not go_on:
            return
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        self._await_headers()
        if self._buffer_paused:
            self._resume_reading_for_buffer()
        if held:
            self.data_received(b"".join(held))

    # -- the deadlines -------------------------------------------------------------------

    def _await_headers(self) -> None:
        if self._force_close or self._close or self.transport is None or self._messages:
            return  # closing, or the next request is already here (pipelined)
        self._phase = _HEADERS
        self._header_bytes = 0
        self._deadline.arm(self._loop.time() + self._guard.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        if self._phase != _HEADERS or self.transport is None:
            return
        if self._header_bytes == 0:
            if self._request_count == 0:  # opened and never used: a slow client too
                self._guard.closed("header_timeout")
            self.force_close()  # an idle keep-alive connection is closed as usual
            return
        seconds = f"{self._guard.header_timeout:g}"
        self._cut(
            "header_timeout",
            canned_answer(
                408, "header_timeout", f"the request's headers did not arrive within {seconds} s"
            ),
        )

    def _body_late(self, payload: StreamReader) -> None:
        if payload.is_eof() or self.transport is None:
            return
        self._guard.closed("body_timeout")
        if self._request_in_progress:
            seconds = f"{self._guard.body_timeout:g}"
            payload.set_exception(BodyTimeout(f"the body did not arrive within {seconds} s"))
        else:
            self.force_close()  # answered already; nobody waits for the rest of it

    def _cut(self, reason: str, answer: bytes) -> None:
        self._deadline.clear()
        self._guard.closed(reason)
        if self.transport is not None:
            self.transport.write(answer)
        self.force_close()  # closes once the answer is written
