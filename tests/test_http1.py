"""The deliveries' HTTP/1.1 client against real peers on loopback: well-behaved aiohttp ones,
and raw sockets that answer the way broken peers do."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.io.http1 import (
    AnswerTooLarge,
    BadAnswer,
    CannotConnect,
    Http1Client,
    PeerClosed,
)

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client(user_agent="test")
    yield http
    await http.close()


class RawPeer:
    """A TCP server whose every connection runs `peer`; it counts connections and their ends."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.opened = 0
        self.ended = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.peer(reader, writer)
        finally:
            writer.close()
            self.ended.set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


def answering(*answers: bytes) -> Peer:
    """Reads a request and sends the next answer, for as long as answers are left."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()  # until the client hangs up

    return peer


async def test_a_post_carries_its_headers_and_body_and_reuses_the_connection(
    aiohttp_server: Callable[..., Awaitable[TestServer]], client: Http1Client
) -> None:
    seen: list[tuple[str, str | None, str | None, bytes, object]] = []

    async def hook(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        body = await request.read()
        auth = request.headers.get("Authorization")
        seen.append((request.method, auth, request.host, body, peer))
        return web.json_response({"n": len(seen)}, headers={"X-Seen": str(len(seen))})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    url = str(server.make_url("/hook?k=v"))
    bearer = {**JSON, "Authorization": "Bearer t"}
    first = await client.post(url, bearer, b'{"a":1}', timeout=5, cap=1024)
    second = await client.post(url, JSON, b'{"a":2}', timeout=5, cap=1024)
    assert (first.status, first.body, first.headers["x-seen"]) == (200, b'{"n": 1}', "1")
    assert (second.status, second.body) == (200, b'{"n": 2}')
    assert [s[:4] for s in seen] == [
        ("POST", "Bearer t", f"127.0.0.1:{server.port}", b'{"a":1}'),
        ("POST", None, f"127.0.0.1:{server.port}", b'{"a":2}'),
    ]
    assert seen[0][4] == seen[1][4]  # one connection, kept alive


async def test_answers_end_by_length_by_chunks_or_at_the_close(client: Http1Client) -> None:
    chunks = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    sized = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    async with RawPeer(answering(chunked, sized)) as url:
        assert (await client.post(url, JSON, b"{}", timeout=5, cap=64)).body == b"abcde"
        assert (await client.post(url, JSON, b"{}", timeout=5, cap=64))[::2] == (201, b"ok")

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

    async with RawPeer(until_close) as url:
        assert (await client.post(url, JSON, b"{}", timeout=5, cap=64)).body == b"all of it"


async def test_an_interim_answer_is_passed_over(client: Http1Client) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    async with RawPeer(answering(answer)) as url:
        assert (await client.post(url, JSON, b"{}", timeout=5, cap=64))[::2] == (200, b"x")


async def test_a_connection_the_peer_closes_is_not_reused(client: Http1Client) -> None:
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    peer = RawPeer(answering(close))
    async with peer as url:
        await client.post(url, JSON, b"{}", timeout=5, cap=64)
        await client.post(url, JSON, b"{}", timeout=5, cap=64)
    assert peer.opened == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",  # declared: nothing is read
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n" + b"x" * 256 + b"\r\n",
    ],
)
async def test_an_answer_past_the_cap_fails(client: Http1Client, answer: bytes) -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        while not reader.at_eof():  # more chunks until the client hangs up
            writer.write(b"100\r\n" + b"x" * 256 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0)

    async with RawPeer(peer) as url:
        with pytest.raises(AnswerTooLarge, match="answer larger than 64 bytes"):
            await client.post(url, JSON, b"{}", timeout=5, cap=64)


async def test_a_peer_that_never_answers_times_out_and_loses_the_connection(
    client: Http1Client,
) -> None:
    peer = RawPeer(answering())  # reads, never answers
    async with peer as url:
        with pytest.raises(TimeoutError):
            await client.post(url, JSON, b"{}", timeout=0.2, cap=64)
        await asyncio.wait_for(peer.ended.wait(), 5)


async def test_each_request_on_a_kept_alive_connection_has_its_own_deadline(
    client: Http1Client,
) -> None:
    loop = asyncio.get_running_loop()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    answer_second_at = asyncio.get_running_loop().create_future()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok)
        await read_request(reader)
        await asyncio.sleep(await answer_second_at - loop.time())
        writer.write(ok)
        await read_request(reader)  # the third is never answered
        await reader.read()

    raw = RawPeer(peer)
    async with raw as url:
        first_deadline = loop.time() + 2
        assert (await client.post(url, JSON, b"{}", timeout=2, cap=64)).body == b"ok"
        await asyncio.sleep(1)
        # Answered after the first request's deadline, well within its own.
        answer_second_at.set_result(first_deadline + 0.2)
        second_deadline = loop.time() + 2
        assert (await client.post(url, JSON, b"{}", timeout=2, cap=64)).body == b"ok"
        # A shorter deadline than the one armed for the second request is kept.
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.post(url, JSON, b"{}", timeout=0.3, cap=64)
        assert started + 0.3 <= loop.time() < second_deadline
        assert raw.opened == 1


async def test_a_peer_that_hangs_up_or_speaks_nonsense_fails_the_call(client: Http1Client) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with RawPeer(hang_up) as url:
        with pytest.raises(PeerClosed, match="before a complete answer"):
            await client.post(url, JSON, b"{}", timeout=5, cap=64)
    async with RawPeer(answering(b"SMTP ready\r\n\r\n")) as url:
        with pytest.raises(BadAnswer, match="malformed answer"):
            await client.post(url, JSON, b"{}", timeout=5, cap=64)


async def test_nobody_listening_is_cannot_connect(client: Http1Client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CannotConnect, match=f"cannot connect to 127.0.0.1:{port}"):
        await client.post(f"http://127.0.0.1:{port}/x", JSON, b"{}", timeout=5, cap=64)


async def test_headers_that_would_split_the_request_are_refused(client: Http1Client) -> None:
    peer = RawPeer(answering())
    async with peer as url:
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            await client.post(url, {"Authorization": "Bearer a\r\nX: y"}, b"{}", timeout=5, cap=64)
    assert peer.opened == 0


async def test_credentials_in_the_url_are_sent_as_basic_auth_but_never_beside_a_token(
    client: Http1Client,
) -> None:
    heads: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await reader.read()

    async with RawPeer(peer) as url:
        with_user = url.replace("http://", "http://flow:pa%20ss@")
        with pytest.raises(ValueError, match="both"):
            await client.post(with_user, {"Authorization": "Bearer t"}, b"{}", timeout=5, cap=64)
        assert (await client.post(with_user, JSON, b"{}", timeout=5, cap=64)).status == 204
    expected = base64.b64encode(b"flow:pa ss").decode()
    assert [f"Authorization: Basic {expected}".encode() in h for h in heads] == [True]


async def test_idle_connections_close_after_a_while_and_all_close_with_the_client() -> None:
    client = Http1Client(user_agent="test", idle_s=0.05)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    first, second = RawPeer(answering(ok)), RawPeer(answering(ok))
    async with first as url_1, second as url_2:
        await client.post(url_1, JSON, b"{}", timeout=5, cap=64)
        await asyncio.wait_for(first.ended.wait(), 5)  # closed for idleness
        await client.post(url_2, JSON, b"{}", timeout=5, cap=64)
        await client.close()
        await asyncio.wait_for(second.ended.wait(), 5)
        with pytest.raises(PeerClosed, match="closed"):
            await client.post(url_2, JSON, b"{}", timeout=5, cap=64)


def endless(head: bytes, filler: bytes) -> Peer:
    """Answers with `head`, then sends `filler` for as long as the client listens."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head)
        while not reader.at_eof() and not writer.is_closing():
            writer.write(filler * 64)
            await writer.drain()
            await asyncio.sleep(0)

    return peer


@pytest.mark.parametrize(
    ("head", "filler", "error", "text"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Long: ", b"a", BadAnswer, "answer headers past 65536 bytes"),
        (b"HTTP/1.1 200 OK\r\n", b"X-Many: 1\r\n", BadAnswer, "more than 128 headers"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-T: ",
            b"a",
            AnswerTooLarge,
            "answer larger than 64 bytes",
        ),
    ],
    ids=["endless-header", "endless-headers", "endless-trailer"],
)
async def test_a_head_or_trailers_without_end_fail_long_before_the_deadline(
    client: Http1Client, head: bytes, filler: bytes, error: type[Exception], text: str
) -> None:
    async with RawPeer(endless(head, filler)) as url:
        with pytest.raises(error, match=text):
            await client.post(url, JSON, b"{}", timeout=30, cap=64)


async def test_trailers_never_replace_headers(client: Http1Client) -> None:
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\nRetry-After: 9999\r\n\r\n"
    )
    async with RawPeer(answering(answer)) as url:
        reply = await client.post(url, JSON, b"{}", timeout=5, cap=64)
    assert (reply.status, reply.headers["retry-after"]) == (429, "5")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # No body follows a 204, whatever length it declares.
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 100000\r\n\r\n", (204, b"")),
        # A coding other than chunked last: the body ends at the close.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzipped", (200, b"zipped")),
    ],
)
async def test_bodies_end_where_http_says(
    client: Http1Client, answer: bytes, expected: tuple[int, bytes]
) -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)

    async with RawPeer(peer) as url:
        assert (await client.post(url, JSON, b"{}", timeout=5, cap=64))[::2] == expected


async def test_a_peer_that_switches_protocols_fails_the_call(client: Http1Client) -> None:
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nxx"
    async with RawPeer(answering(answer)) as url:
        with pytest.raises(BadAnswer, match="switched protocols"):
            await client.post(url, JSON, b"{}", timeout=5, cap=64)


async def test_a_password_without_a_user_is_still_sent(client: Http1Client) -> None:
    heads: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async with RawPeer(peer) as url:
        await client.post(url.replace("http://", "http://:key@"), JSON, b"{}", timeout=5, cap=64)
    assert b"Authorization: Basic " + base64.b64encode(b":key") in heads[0]


async def test_closing_the_client_fails_an_answer_that_ends_at_the_close() -> None:
    client = Http1Client(user_agent="test")

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart")
        await reader.read()

    async with RawPeer(peer) as url:
        call = asyncio.ensure_future(client.post(url, JSON, b"{}", timeout=5, cap=64))
        while not any(c._received for c in client._live):  # the answer has begun to arrive
            await asyncio.sleep(0.01)
        await client.close()
        with pytest.raises(PeerClosed, match="closed by the router"):
            await call
