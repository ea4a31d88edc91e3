"""The lean path for channel events (`router.http.lean`): which requests it takes, and that
what it answers is what aiohttp answers the same request, in turn with the others on the
connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from router.http.guard import _HELD_MAX, GuardedProtocol
from router.http.lean import parse_request
from tests.conftest import ASSET_TOKEN, Conn, Connect, Daemon, Peers

EVENTS = "/v1/channels/fb-page-1/events"
MAX_HEAD, MAX_BODY = 8192, 4096


def body_of(message_id: str) -> bytes:
    return orjson.dumps(
        {"Event": "Incoming message", "Userid": "u1", "Message": "hi", "Messageid": message_id}
    )


def request(
    body: bytes, *extra: str, token: str = ASSET_TOKEN, path: str = EVENTS, length: Any = None
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: x",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(body) if length is None else length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- which requests it takes ---------------------------------------------------------------


def test_a_plain_channel_event_is_taken_with_what_its_door_needs() -> None:
    taken = parse_request(
        request(body_of("m1"), "X-Forwarded-For: 10.0.0.1", "X-Forwarded-For: 10.0.0.2"),
        MAX_HEAD,
        MAX_BODY,
    )
    assert taken is not None
    assert (taken.asset_id, taken.authorization, taken.forwarded, taken.close) == (
        "fb-page-1",
        f"Bearer {ASSET_TOKEN}",
        ["10.0.0.1", "10.0.0.2"],
        False,
    )
    assert taken.body == body_of("m1") and taken.path == EVENTS
    closing = parse_request(request(b"{}", "Connection: close"), MAX_HEAD, MAX_BODY)
    assert closing is not None and closing.close


BODY = body_of("m1")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(request(BODY)[:-1], id="body-not-whole"),
        pytest.param(request(BODY)[:40], id="head-not-whole"),
        pytest.param(request(BODY) + request(BODY), id="pipelined-pair"),
        pytest.param(request(BODY, "Transfer-Encoding: chunked"), id="transfer-encoding"),
        pytest.param(request(BODY, "Expect: 100-continue"), id="expect"),
        pytest.param(request(BODY, "Content-Encoding: identity"), id="content-encoding"),
        pytest.param(request(BODY, "Upgrade: websocket"), id="upgrade"),
        pytest.param(request(BODY, "Connection: Upgrade"), id="connection-other"),
        pytest.param(request(BODY, f"Content-Length: {len(BODY)}"), id="two-lengths"),
        pytest.param(request(BODY, "Authorization: Bearer other"), id="two-authorizations"),
        pytest.param(request(BODY, length="+75"), id="length-signed"),
        pytest.param(request(BODY, length=f" {len(BODY)}x"), id="length-not-digits"),
        pytest.param(request(b"x" * (MAX_BODY + 1)), id="body-over-limit"),
        pytest.param(request(BODY, "X-Big: " + "a" * MAX_HEAD), id="head-over-limit"),
        pytest.param(request(BODY, path=EVENTS + "?x=1"), id="query"),
        pytest.param(request(BODY, path="/v1/channels/fb%2Dpage-1/events"), id="percent"),
        pytest.param(request(BODY, path="/v1/channels/fb-page-1/events/"), id="other-path"),
        pytest.param(request(BODY).replace(b"HTTP/1.1", b"HTTP/1.0", 1), id="http-1.0"),
        pytest.param(request(BODY).replace(b"POST", b"post", 1), id="method-case"),
        pytest.param(request(BODY, " folded"), id="obs-fold"),
        pytest.param(request(BODY, "Bad Name: x"), id="bad-name"),
        pytest.param(request(BODY, "X-Ctl: a\x01b"), id="control-in-value"),
        pytest.param(request(BODY).replace(b"\r\n", b"\n"), id="bare-newlines"),
        pytest.param(request(BODY).replace(b"Host: x\r\n", b""), id="no-host"),
        pytest.param(request(BODY, "Host: y"), id="two-hosts"),
        pytest.param(request(BODY, "Content-Type: text/plain"), id="two-content-types"),
        pytest.param(request(BODY, "Proxy-Connection: close"), id="proxy-connection"),
        pytest.param(request(BODY, "Sec-WebSocket-Key1: x"), id="sec-websocket-key1"),
    ],
)
def test_anything_but_a_plain_whole_request_is_left_to_aiohttp(data: bytes) -> None:
    assert parse_request(data, MAX_HEAD, MAX_BODY) is None


# -- what it answers -----------------------------------------------------------------------


async def answer(conn: Conn) -> tuple[str, dict[str, str], bytes]:
    """The next whole answer: its status line, headers (lower-cased, no `Date`), body."""
    async with asyncio.timeout(10):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        body = await conn.reader.readexactly(int(headers["content-length"]))
    headers.pop("date")
    return status, headers, body


@pytest.mark.parametrize(
    ("kind", "status"),
    [("new", 202), ("duplicate", 200), ("token", 401), ("not-json", 400), ("incomplete", 400)],
)
async def test_the_lean_answer_is_what_aiohttp_answers(
    daemon: Daemon, connect: Connect, monkeypatch: pytest.MonkeyPatch, kind: str, status: int
) -> None:
    """The same request, once plain (the lean path) and once with a header that sends it to
    aiohttp (`Content-Encoding: identity`, which changes nothing else), on one connection."""
    lean_path = daemon.router.listeners["public"].lean
    assert lean_path is not None
    taken: list[bool] = []
    take = lean_path.take

    def counted(data: bytes, transport: Any) -> Any:
        answer = take(data, transport)
        taken.append(answer is not None)
        return answer

    monkeypatch.setattr(lean_path, "take", counted)
    bodies = {"not-json": b"{not json", "incomplete": b'{"Event": "Incoming message"}'}
    token = "wrong" if kind == "token" else ASSET_TOKEN

    def body(n: int) -> bytes:
        return body_of(f"n{n}") if kind == "new" else bodies.get(kind, BODY)

    conn = await connect(daemon.router.public_port)
    if kind == "duplicate":
        await conn.send(request(BODY))
        assert (await answer(conn))[0] == "HTTP/1.1 202 Accepted"
    await conn.send(request(body(1), token=token))
    lean = await answer(conn)
    await conn.send(request(body(2), "Content-Encoding: identity", token=token))
    through_aiohttp = await answer(conn)
    assert lean[0].split()[1] == str(status), lean
    assert lean == through_aiohttp
    assert taken[-2:] == [True, False]


async def test_requests_on_one_connection_are_answered_in_order(
    daemon: Daemon, peers: Peers, connect: Connect
) -> None:
    """One sent while a lean request waits for its commit is answered after it; a pair sent
    in one write goes to aiohttp whole; both in turn."""
    conn = await connect(daemon.router.public_port)
    await conn.send(request(body_of("a1")))
    await conn.send(request(body_of("a2"), token="wrong"))
    await conn.send(request(body_of("a3")) + request(body_of("a4"), token="wrong"))
    await conn.send(request(body_of("a5")))
    statuses = [(await answer(conn))[0].split()[1] for _ in range(5)]
    assert statuses == ["202", "401", "202", "401", "202"]
    got = await peers.bot.wait_for(3)
    assert {m["Messageid"] for m in got} == {"a1", "a3", "a5"}


async def test_once_aiohttp_has_read_part_of_a_request_it_reads_the_rest(
    daemon: Daemon, peers: Peers, connect: Connect
) -> None:
    """A head left unfinished behind an answered request is finished by the next read, even
    one that would be a whole channel event on its own: it belongs to the unfinished one."""
    conn = await connect(daemon.router.public_port)
    await conn.send(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\nPOST /other HTTP/1.1\r\nX-Pad: ")
    assert (await answer(conn))[0].split()[1] == "404"
    await conn.send(request(body_of("d1")))
    status, _, body = await answer(conn)
    assert status.split()[1] != "202", body  # the /other request, whatever aiohttp made of it
    await conn.send(request(body_of("d2")))
    assert (await answer(conn))[0] == "HTTP/1.1 202 Accepted"
    got = await peers.bot.wait_for(1)
    assert [m["Messageid"] for m in got] == ["d2"]


async def test_a_request_split_over_reads_is_served_through_aiohttp(
    daemon: Daemon, peers: Peers, connect: Connect
) -> None:
    conn = await connect(daemon.router.public_port)
    data = request(body_of("s1"))
    await conn.send(data[:60])
    await asyncio.sleep(0.05)  # most likely a read of its own; the answer is the same anyway
    await conn.send(data[60:])
    assert (await answer(conn))[0] == "HTTP/1.1 202 Accepted"
    await peers.bot.wait_for(1)


async def test_connection_close_is_answered_and_closed(daemon: Daemon, connect: Connect) -> None:
    conn = await connect(daemon.router.public_port)
    await conn.send(request(body_of("c1"), "Connection: close"))
    status, headers, body = await answer(conn)
    assert (status, headers["connection"], orjson.loads(body)) == (
        "HTTP/1.1 202 Accepted",
        "close",
        {"accepted": True},
    )
    async with asyncio.timeout(10):
        assert await conn.reader.read() == b""


# -- a client that does not read -----------------------------------------------------------


async def test_a_client_that_does_not_read_stops_being_read_and_is_answered_in_order_once_it_does(
    daemon: Daemon, peers: Peers
) -> None:
    """Answers a client leaves unread fill its socket and then the connection's write buffer;
    the lean request whose answer is written then waits for the client, the requests behind
    it are held up to a cap, and past the cap the connection is no longer read from: the
    client's sends back up in its own socket instead of the router's memory. Once it reads,
    every request has its answer, in the order sent."""
    loop = asyncio.get_running_loop()
    runner = daemon.router.public_runner
    assert runner is not None and runner.server is not None
    server = runner.server
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    writer: asyncio.StreamWriter | None = None

    async def settled(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():
                await asyncio.sleep(0)

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", daemon.router.public_port))
        await settled(lambda: len(server.connections) == 1)
        handler = server.connections[0]
        transport = handler.transport
        assert isinstance(handler, GuardedProtocol) and transport is not None
        # The least the kernel keeps for unread answers on the router's side, so that the
        # connection's own write buffer is reached after hundreds of answers, not thousands.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        kinds = [(b"{not json", ASSET_TOKEN), (BODY, "wrong")]  # answered 400, then 401

        def read_past(taken: int, held: int) -> Callable[[], bool]:
            return lambda: handler._request_count > taken or handler._held_bytes > held

        sent = 0
        while transport.is_reading():
            body, token = kinds[sent % 2]
            read = read_past(handler._request_count, handler._held_bytes)
            await loop.sock_sendall(sock, request(body, token=token))
            sent += 1
            await settled(read)  # read on its own: taken, or held behind the answer that waits
            assert sent < 5_000, "the router never stopped reading from the client"
        # Stopped by the lean path: its answer waits for the client, the rest is held.
        assert handler.writing_paused and handler._lean_task is not None
        assert _HELD_MAX < handler._held_bytes <= _HELD_MAX + len(request(BODY, token="wrong"))
        high = transport.get_write_buffer_limits()[1]
        assert transport.get_write_buffer_size() <= high + 1024  # one answer past the mark
        reader, writer = await asyncio.open_connection(sock=sock)
        conn = Conn(reader, writer)
        statuses = [(await answer(conn))[0].split()[1] for _ in range(sent)]
        assert statuses == ["400", "401"] * (sent // 2) + ["400"] * (sent % 2)
        await conn.send(request(body_of("after")))
        assert (await answer(conn))[0] == "HTTP/1.1 202 Accepted"
        assert [m["Messageid"] for m in await peers.bot.wait_for(1)] == ["after"]
    finally:
        if writer is None:
            sock.close()
        else:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
