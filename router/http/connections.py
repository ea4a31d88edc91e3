"""A listener's connections: counted and capped, in all and per peer address, before anything
else is spent on them; over TLS, handshaken within the header deadline.

asyncio makes a `Gate` for each accepted socket. Past a cap it answers at once and closes (a
canned JSON `503`, or `429` for one address over its share; over TLS nothing can be said
before a handshake, so it only closes). Under the caps it hands the socket to a
`GuardedProtocol`, after the TLS handshake when there is one. The raw socket is what is
counted, so a client stuck in its handshake counts as much as one stuck in its headers, and
the caps bound the descriptors clients can hold (see `router.io.fd_limit`).

The per-address cap counts the socket's own peer: a proxy's `X-Forwarded-For` is for
request limits (`router.http.admission`), never for this.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiohttp import web

from router.http.errors import JsonErrorServer
from router.http.guard import Guard, GuardedProtocol, Lean, canned_answer

__all__ = ["ConnectionLimits", "GuardedSite", "Listener", "load_tls", "peer_address"]


class ConnectionLimits:
    """Open connections, in all and by peer address; `admit` takes a place or says why not."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> _Place | str:
        if self.open >= self.total:
            return "max_connections"
        held = self.by_address.get(address, 0)
        if held >= self.per_address:
            return "max_connections_per_address"
        self.open += 1
        self.by_address[address] = held + 1
        return _Place(self, address)

    def _release(self, address: str) -> None:
        self.open -= 1
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)  # a flood of addresses leaves nothing behind


@dataclass
class _Place:
    limits: ConnectionLimits
    address: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limits._release(self.address)


class Listener:
    """One port's policy: its runner's server, the deadlines, the caps and TLS. Called by
    asyncio for each accepted socket (the protocol factory)."""

    def __init__(
        self,
        server: JsonErrorServer,
        guard: Guard,
        limits: ConnectionLimits,
        tls: ssl.SSLContext | None = None,
        lean: Lean | None = None,
    ) -> None:
        self.server = server
        self.guard = guard
        self.limits = limits
        self.tls = tls
        self.lean = lean
        self.handshakes: set[Gate] = set()

    def __call__(self) -> Gate:
        return Gate(self)

    def handler(self, place: _Place) -> GuardedProtocol:
        server = self.server
        return GuardedProtocol(
            server,
            guard=self.guard,
            ticket=place,
            on_error=server.on_error,
            lean=self.lean,
            loop=server._loop,
            **server._kwargs,
        )

    def abort_handshakes(self) -> None:
        """On stop: a connection still in its handshake has no handler to close it."""
        for gate in list(self.handshakes):
            gate.abort()


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


class Gate(asyncio.Protocol):
    """The first protocol of every accepted socket; it hands the socket on or closes it."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.place: _Place | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        listener = self.listener
        admitted = listener.limits.admit(peer_address(transport))
        if isinstance(admitted, str):
            listener.guard.closed(admitted)
            if listener.tls is None:
                transport.write(_refusal(admitted, listener.limits))
            transport.close()
            return
        handler = listener.handler(admitted)
        if listener.tls is None:
            transport.set_protocol(handler)
            handler.connection_made(transport)
            return
        self.transport, self.place = transport, admitted
        transport.pause_reading()  # nothing is read before the handshake takes the socket
        listener.handshakes.add(self)
        self.task = asyncio.get_running_loop().create_task(self._handshake(handler))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.place is not None:
            self.place.release()

    async def _handshake(self, handler: GuardedProtocol) -> None:
        listener, transport, place = self.listener, self.transport, self.place
        assert transport is not None and place is not None and listener.tls is not None
        try:
            secured = await asyncio.get_running_loop().start_tls(
                transport,
                handler,
                listener.tls,
                server_side=True,
                ssl_handshake_timeout=listener.guard.header_timeout,
            )
        except (OSError, EOFError):  # ssl.SSLError, a timeout, a reset: all the client's
            listener.guard.closed("tls_handshake")
            transport.abort()
            place.release()
            return
        finally:
            listener.handshakes.discard(self)
        if secured is None:  # closed meanwhile
            place.release()
            return
        handler.connection_made(secured)

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()
        if self.place is not None:
            self.place.release()
        self.listener.handshakes.discard(self)


def _refusal(reason: str, limits: ConnectionLimits) -> bytes:
    if reason == "max_connections_per_address":
        return canned_answer(
            429,
            "too_many_connections",
            f"this address holds the most connections one address may ({limits.per_address})",
            retry_after=1,
        )
    return canned_answer(
        503,
        "too_many_connections",
        f"the server holds the most connections it takes ({limits.total})",
        retry_after=1,
    )


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site, with `Listener` as its protocol factory (and TLS done by the
    listener, so that the handshake is counted and timed)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, listener: Listener) -> None:
        super().__init__(runner, host, port, ssl_context=listener.tls)
        self._listener = listener

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers with the runner; TCPSite's would listen
        self._server = await asyncio.get_running_loop().create_server(
            self._listener,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        await super().stop()
        self._listener.abort_handshakes()


def load_tls(cert: str, key: str) -> ssl.SSLContext:
    """The public port's TLS context; `OSError` or `ssl.SSLError` when the files do not do."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
