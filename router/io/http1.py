"""The router's own HTTP/1.1 client: a POST of JSON to a peer, its answer read whole.

Deliveries are the router's hottest outbound call, one per message, and aiohttp's client
spends about 100 µs of the loop on each (its session, request and response objects, timers
and streams). A delivery needs far less: a keep-alive connection per origin, one request at a
time on it, a deadline for the whole call (connecting included), and a cap on the answer. This
client does that and no more, on httptools' C parser, at about a third of the cost
(`bench/README.md`, "Where the time goes"). It never follows a redirect and never decompresses.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from typing import NamedTuple

import httptools
from yarl import URL

from router.io.deadline import LazyDeadline

IDLE_S = 15.0  # an idle connection is closed after this long: the peer may have forgotten it
HEAD_LIMIT = 64 * 1024  # an answer's status line and headers, with any interim answers
MAX_HEADERS = 128  # headers and trailers of one answer
_TARGETS_KEPT = 1024  # parsed URLs remembered; a bot's URL is parsed once, not per message


class PeerError(Exception):
    """The peer could not be reached, or broke HTTP: the attempt failed."""


class CannotConnect(PeerError):
    pass


class PeerClosed(PeerError):
    pass


class BadAnswer(PeerError):
    pass


class AnswerTooLarge(PeerError):
    """A peer's answer past the cap: the attempt fails, and no more of it is read."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"answer larger than {cap} bytes")


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes


class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class _Target(NamedTuple):
    origin: _Origin
    request_line: bytes  # "POST /path?query HTTP/1.1\r\nHost: ...\r\n"
    basic_auth: str | None  # from user:password in the URL, as aiohttp would send it


def _target(url: str) -> _Target:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host or parsed.port is None:
        raise ValueError(f"cannot POST to {parsed.scheme or 'a relative'} URL")
    origin = _Origin(parsed.scheme, parsed.raw_host, parsed.port)
    path, host = parsed.raw_path_qs, parsed.host_port_subcomponent or ""
    _check(path + host)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
    auth = None
    if parsed.user is not None or parsed.password is not None:
        pair = f"{parsed.user or ''}:{parsed.password or ''}".encode("latin-1")  # as aiohttp
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
    return _Target(origin, head.encode("latin-1"), auth)


def _check(text: str) -> None:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError("a header or URL carries CR, LF or NUL")


class _Connection(asyncio.Protocol):
    """One connection to one origin; at most one request on it at a time."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Reply] | None = None
        self._deadline = LazyDeadline(asyncio.get_running_loop())  # the answer's
        self._cap = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._until_close = False  # an answer with neither a length nor chunks ends at EOF
        self._keep = False
        # What the parser may hold before a callback sees it is bounded by bytes on the
        # wire: the head until its end, and everything (framing, trailers) within a budget.
        self._head_done = False
        self._received = 0
        self._budget = 0
        self._count = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.abort()  # bytes nobody asked for: the connection can no longer be trusted
            return
        self._received += len(data)
        if self._received > self._budget:
            self._fail(AnswerTooLarge(self._cap))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the peer switched protocols"))
        except Exception as exc:  # the parser's error, or one raised in a callback
            self._fail(BadAnswer(f"malformed answer: {exc}"))
        else:
            if not self._head_done and self._received > HEAD_LIMIT:
                self._fail(BadAnswer(f"answer headers past {HEAD_LIMIT} bytes"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deadline.cancel()
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._until_close:
            self._done()
            return
        reason = f": {exc}" if exc else ""
        waiter.set_exception(PeerClosed(f"connection closed before a complete answer{reason}"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self._keep = False  # a second answer to one request: drop the connection
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > MAX_HEADERS:
            self._fail(BadAnswer(f"answer with more than {MAX_HEADERS} headers"))
        elif not self._head_done:  # a trailer never stands in for a header
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return
        self._head_done = True
        bodiless = status in (204, 304)
        length = self._headers.get("content-length")
        if not bodiless and length is not None and length.isdigit() and int(length) > self._cap:
            self._fail(AnswerTooLarge(self._cap))
            return
        coding = self._headers.get("transfer-encoding", "").rsplit(",", 1)[-1].strip().lower()
        self._until_close = not bodiless and length is None and coding != "chunked"

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._cap:
            self._fail(AnswerTooLarge(self._cap))

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            self._headers = {}  # an interim answer: the real one follows
            return
        self._keep = self._parser.should_keep_alive()
        self._done()

    # -- the client's side -----------------------------------------------------------------

    def send(self, data: bytes, cap: int, deadline: float) -> asyncio.Future[Reply]:
        """The answer, which fails with `TimeoutError` if it is not whole by `deadline`
        (the loop's time)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._deadline.arm(deadline, self._timed_out)
        self._cap = cap
        self._headers = {}
        self._body = bytearray()
        self._until_close = False
        self._keep = False
        self._head_done = False
        self._received = 0
        # The body's cap, with room for its head, its chunks' framing and its trailers.
        self._budget = 2 * cap + HEAD_LIMIT
        self._count = 0
        self.transport.write(data)
        return waiter

    def _done(self) -> None:
        self._deadline.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            status = self._parser.get_status_code()
            waiter.set_result(Reply(status, self._headers, bytes(self._body)))
        self._headers = {}
        if not self._keep:
            self.abort()

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.abort()

    def reusable(self) -> bool:
        return (
            self._keep
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def abort(self) -> None:
        """Drop the connection; an answer still awaited fails (one that ends at the close
        must not pass for complete because the router closed it)."""
        self.closed = True
        self._deadline.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(PeerClosed("connection closed by the router"))
        if self.transport is not None:
            self.transport.abort()

    def _timed_out(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())


class Http1Client:
    """Keep-alive connections per origin, reused newest first; idle ones close after
    `idle_s`. Nothing is retried here: a failed call is a failed attempt, and the delivery's
    own backoff decides what comes next."""

    def __init__(
        self, *, user_agent: str, idle_s: float = IDLE_S, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._agent = (
            f"User-Agent: {user_agent}\r\nAccept: */*\r\nAccept-Encoding: identity\r\n".encode()
        )
        self._idle_s = idle_s
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._live: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self._ssl = ssl_context  # the system's trust store unless given
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, *, timeout: float, cap: int
    ) -> Reply:
        """Raises `PeerError`, `TimeoutError`, or `ValueError` for a header or URL that
        cannot be sent."""
        if self._closed:
            raise PeerClosed("the client is closed")
        target = self._targets.get(url)
        if target is None:
            target = _target(url)
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            self._targets[url] = target
        if target.basic_auth is not None:
            if any(name.lower() == "authorization" for name in headers):
                raise ValueError("cannot send both an Authorization header and URL credentials")
            headers = {**headers, "Authorization": target.basic_auth}
        for name, value in headers.items():
            _check(name + value)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        data = b"".join(
            (
                target.request_line,
                self._agent,
                lines.encode(),
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = self._take(target.origin, loop.time())
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await self._connect(target.origin)
        try:
            if self._closed:
                raise PeerClosed("the client is closed")
            reply = await connection.send(data, cap, deadline)
        except BaseException:
            connection.abort()
            raise
        finally:
            self._live.discard(connection)
        if connection.reusable():
            self._give_back(connection, loop)
        return reply

    def _take(self, origin: _Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.idle_since <= now - self._idle_s:
                connection.abort()  # too long idle: the peer may be closing it right now
            elif connection.reusable():
                self._live.add(connection)
                return connection
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(origin),
                origin.host,
                origin.port,
                ssl=context,
                # A certificate names the host without the root's trailing dot.
                server_hostname=origin.host.rstrip(".") if context else None,
                # A host with an address family that cannot be reached falls back quickly.
                happy_eyeballs_delay=0.25,
                interleave=1,
            )
        except OSError as exc:
            raise CannotConnect(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        self._live.add(connection)
        return connection

    def _give_back(self, connection: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            connection.abort()
            return
        connection.idle_since = loop.time()
        self._idle.setdefault(connection.origin, deque()).append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(self._idle_s, self._close_idle, loop)

    def _close_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        stale = loop.time() - self._idle_s
        for origin, idle in list(self._idle.items()):
            while idle and (idle[0].closed or idle[0].idle_since <= stale):
                idle.popleft().abort()
            if not idle:
                del self._idle[origin]
        if self._idle:
            self._sweep = loop.call_later(self._idle_s, self._close_idle, loop)

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
        for connection in list(self._live):
            connection.abort()
        self._live.clear()
        await asyncio.sleep(0)  # a plain transport's connection_lost runs before this returns
