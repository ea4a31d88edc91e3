"""Slow and greedy clients on the public port: the header and body deadlines, headers too
large, the connection caps, and failed accepts logged once per interval."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from pathlib import Path
from typing import Any

import orjson
from structlog.testing import capture_logs

from router.http.quiet import AcceptErrors, ThrottledLog
from router.io.fd_limit import connection_cap
from tests.conftest import ASSET_TOKEN, Connect, Daemon, Peers, StartRouter, base_config

EVENTS = "/v1/channels/fb-page-1/events"
BODY = b'{"Event":"Incoming message","Userid":"u1","Message":"hi","Messageid":"m1"}'


def server(peers: Peers, tmp_path: Path, **keys: Any) -> dict[str, Any]:
    config = base_config(peers, tmp_path / "router.db")
    config["server"].update(keys)
    return config


def answer_of(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, orjson.loads(body) if body else None


async def closed_count(daemon: Daemon, reason: str, port: str = "public") -> float:
    _, text = await daemon.get_debug("/metrics")
    key = f'router_http_connections_closed_total{{port="{port}",reason="{reason}"}} '
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(key)), 0)


# -- the header deadline -------------------------------------------------------------------


async def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_timeout(
    start_router: StartRouter, peers: Peers, tmp_path: Path, connect: Connect
) -> None:
    daemon = await start_router(server(peers, tmp_path, header_timeout_s=0.5))
    conn = await connect(daemon.router.public_port)
    loop = asyncio.get_running_loop()
    opened = loop.time()

    async def trickle() -> None:  # bytes keep coming: the deadline is not reset by them
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            with contextlib.suppress(ConnectionError):
                await conn.send(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    with capture_logs() as logs:
        raw = await conn.until_closed()
    sender.cancel()
    assert loop.time() - opened >= 0.45
    status, headers, body = answer_of(raw)
    assert (status, headers["connection"]) == (408, "close")
    assert body == {
        "error": "header_timeout",
        "message": "the request's headers did not arrive within 0.5 s",
    }
    assert await closed_count(daemon, "header_timeout") == 1
    assert [e["event"] for e in logs] == ["connections_closed"]
    assert logs[0]["reason"] == "header_timeout" and logs[0]["count"] == 1


async def test_a_connection_that_never_speaks_is_closed_without_an_answer(
    start_router: StartRouter, peers: Peers, tmp_path: Path, connect: Connect
) -> None:
    daemon = await start_router(server(peers, tmp_path, header_timeout_s=0.3))
    conn = await connect(daemon.router.public_port)
    assert await conn.until_closed() == b""
    assert await closed_count(daemon, "header_timeout") == 1


async def test_keep_alive_requests_each_get_the_deadline_and_an_idle_one_is_closed(
    start_router: StartRouter, peers: Peers, tmp_path: Path, connect: Connect
) -> None:
    daemon = await start_router(server(peers, tmp_path, header_timeout_s=0.4))
    conn = await connect(daemon.router.public_port)
    request = (
        f"POST {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ASSET_TOKEN}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    for n in range(3):  # each well within its own deadline, together well past one
        await conn.send(request + BODY.replace(b"m1", f"m{n}".encode()))
        line = await asyncio.wait_for(conn.reader.readline(), 5)
        assert line.startswith(b"HTTP/1.1 202"), line
        await asyncio.wait_for(conn.reader.readuntil(b'{"accepted":true}'), 5)
        await asyncio.sleep(0.2)
    assert await conn.until_closed() == b""  # then idle past the deadline: closed, no answer
    assert await closed_count(daemon, "header_timeout") == 0
    await peers.bot.wait_for(3)


# -- the body deadline ---------------------------------------------------------------------


async def test_a_body_that_stops_coming_is_a_408_at_the_body_timeout(
    start_router: StartRouter, peers: Peers, tmp_path: Path, connect: Connect
) -> None:
    daemon = await start_router(server(peers, tmp_path, body_timeout_s=0.5))
    conn = await connect(daemon.router.public_port)
    await conn.send(
        f"POST {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ASSET_TOKEN}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY[:10]
    )
    status, headers, body = answer_of(await conn.until_closed())
    assert (status, headers["connection"]) == (408, "close")
    assert body == {"error": "body_timeout", "message": "the body did not arrive within 0.5 s"}
    assert await closed_count(daemon, "body_timeout") == 1
    assert peers.bot.received == []


async def test_an_unread_body_does_not_hold_the_connection_past_the_body_timeout(
    start_router: StartRouter, peers: Peers, tmp_path: Path, connect: Connect
) -> None:
    daemon = await start_router(server(peers, tmp_path, body_timeout_s=0.5))
    conn = await connect(daemon.router.public_port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await conn.send(
        f"POST {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY[:10]
    )
    status, _, body = answer_of(await conn.until_closed())
    assert (status, body["error"]) == (401, "unauthorized")
    # aiohttp would wait 10 s for the rest of a body nobody reads.
    assert loop.time() - started < 5


# -- headers too large ---------------------------------------------------------------------


async def test_headers_past_max_header_bytes_are_a_431_before_they_end(
    start_router: StartRouter, peers: Peers, tmp_path: Path, connect: Connect
) -> None:
    daemon = await start_router(server(peers, tmp_path, max_header_bytes=2048))
    conn = await connect(daemon.router.public_port)
    # 5 kB of header lines, never the blank line that would end them.
    await conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n")
    status, _, body = answer_of(await conn.until_closed())
    assert (status, body) == (
        431,
        {"error": "headers_too_large", "message": "the request's headers exceed 2048 bytes"},
    )
    assert await closed_count(daemon, "headers_too_large") == 1


async def test_one_header_line_past_aiohttps_limit_is_a_431(
    daemon: Daemon, connect: Connect
) -> None:
    conn = await connect(daemon.router.public_port)
    await conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n")
    status, _, body = answer_of(await conn.until_closed())
    assert (status, body["error"]) == (431, "headers_too_large")


# -- the connection caps -------------------------------------------------------------------


async def test_connections_past_the_caps_are_answered_at_once_and_closed(
    start_router: StartRouter, peers: Peers, tmp_path: Path, connect: Connect
) -> None:
    daemon = await start_router(
        server(peers, tmp_path, max_connections=4, max_connections_per_address=2)
    )
    port = daemon.router.public_port
    limits = daemon.router.listeners["public"].limits
    held = [await connect(port, "127.0.0.2"), await connect(port, "127.0.0.2")]

    async def admitted(count: int) -> bool:
        return limits.open == count

    await daemon.until(lambda: admitted(2))
    third = await connect(port, "127.0.0.2")
    status, headers, body = answer_of(await third.until_closed())
    assert (status, headers["retry-after"], body["error"]) == (429, "1", "too_many_connections")
    held += [await connect(port, "127.0.0.3"), await connect(port, "127.0.0.4")]
    await daemon.until(lambda: admitted(4))
    fifth = await connect(port, "127.0.0.5")
    status, headers, body = answer_of(await fifth.until_closed())
    assert (status, headers["retry-after"], body) == (
        503,
        "1",
        {
            "error": "too_many_connections",
            "message": "the server holds the most connections it takes (4)",
        },
    )
    assert await closed_count(daemon, "max_connections_per_address") == 1
    assert await closed_count(daemon, "max_connections") == 1
    held.pop().close()  # a place frees up, and is taken again
    await daemon.until(lambda: admitted(3))
    assert (await daemon.customer("hi", "m1"))[0] == 202
    for conn in held:
        conn.close()
    await daemon.until(lambda: admitted(1))  # the session's keep-alive connection stays
    assert limits.by_address == {"127.0.0.1": 1}


def test_the_public_cap_keeps_half_the_open_files() -> None:
    assert connection_cap(1024, 20_000) == 1024
    assert connection_cap(1024, 1024) == 512
    assert connection_cap(1024, 256) == 128
    assert connection_cap(10, 3) == 1


# -- failed accepts ------------------------------------------------------------------------


def test_a_throttled_log_writes_one_line_per_interval_with_the_count() -> None:
    now = [0.0]
    log = ThrottledLog("connections_closed", interval=10.0, now=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(1000):  # 1000 events over 30 s
            log.hit(reason="x")
            now[0] += 0.03
    # One line at the first, then one each time 10 s have passed; the rest wait for the next.
    assert [e["count"] for e in logs] == [1, 334, 334]
    assert log.total == 1000


async def test_failed_accepts_are_logged_once_per_interval_without_a_traceback() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    handler = AcceptErrors(loop, interval=60.0)
    handler.install()
    try:
        with capture_logs() as logs, socket.socket() as listening:
            for _ in range(10_000):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                        "socket": listening,
                    }
                )
            loop.call_exception_handler({"message": "something else"})
    finally:
        handler.uninstall()
    assert logs == [
        {
            "event": "accept_failed",
            "log_level": "error",
            "count": 1,
            "error": "OSError",
            "errno": errno.EMFILE,
        }
    ]
    assert handler.log.total == 10_000
    assert [c["message"] for c in seen] == ["something else"]  # passed on, as before
    assert loop.get_exception_handler() is not handler
    loop.set_exception_handler(None)
