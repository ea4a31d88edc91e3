"""A stop (SIGTERM): new requests get `503 stopping` with `Retry-After`, those under way get up
to `server.stop_grace_s` to finish, and whatever was accepted is delivered."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from router.http.public import ADMISSION
from router.loadtest.command import free_ports
from tests.conftest import ASSET_TOKEN, Daemon, Peers, StartRouter, base_config
from tests.test_restart import toml_document

EVENTS = "/v1/channels/sms-1/events"
BODY = b'{"Event":"Incoming message","Userid":"u1","Message":"last words","Messageid":"m1"}'
HEAD = (
    f"POST {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ASSET_TOKEN}\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
).encode()


@pytest.fixture
async def upload() -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Raw connections for slow uploads, closed after the test."""
    writers: list[asyncio.StreamWriter] = []
    yield writers
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_upload(
    port: int, writers: list[asyncio.StreamWriter]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request whose headers and first bytes of body are sent, the rest held back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writers.append(writer)
    writer.write(HEAD + BODY[:20])
    await writer.drain()
    return reader, writer


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def post_customer(daemon: Daemon, message_id: str) -> tuple[int, dict[str, str], Any]:
    body = {"Event": "Incoming message", "Userid": "u2", "Message": "x", "Messageid": message_id}
    async with daemon.session.post(
        daemon.public + EVENTS, json=body, headers={"Authorization": f"Bearer {ASSET_TOKEN}"}
    ) as answer:
        return answer.status, dict(answer.headers), await answer.json()


async def test_a_request_under_way_finishes_while_new_ones_get_503(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    upload: list[asyncio.StreamWriter],
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    config["server"]["stop_grace_s"] = 5.0
    daemon = await start_router(config)
    admission = daemon.router.public_runner.app[ADMISSION]  # type: ignore[union-attr]
    reader, writer = await start_upload(daemon.router.public_port, upload)
    await until(lambda: admission.in_flight == 1)
    stopping = asyncio.create_task(daemon.router.stop())
    await until(lambda: admission.stopping)
    status, headers, body = await post_customer(daemon, "m2")
    assert (status, headers["Retry-After"], body) == (
        503,
        "5",
        {"error": "stopping", "message": "the router is stopping; send it again shortly"},
    )
    assert not stopping.done()
    writer.write(BODY[20:])  # the upload ends within the grace: accepted
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 202 "), answer
    await asyncio.wait_for(stopping, 10)
    # Accepted is on disk: delivered now or at the next start, never lost.
    if not peers.bot.received:
        await start_router(config)
    [got] = await peers.bot.wait_for(1)
    assert got["Message"] == "last words"
    assert "m2" not in {b["Messageid"] for b in peers.bot.bodies}


async def test_past_the_grace_a_request_under_way_is_cut_and_the_stop_goes_on(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    upload: list[asyncio.StreamWriter],
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    config["server"].update(stop_grace_s=0.5, body_timeout_s=60.0)
    daemon = await start_router(config)
    admission = daemon.router.public_runner.app[ADMISSION]  # type: ignore[union-attr]
    reader, _ = await start_upload(daemon.router.public_port, upload)
    await until(lambda: admission.in_flight == 1)
    started = time.monotonic()
    with capture_logs() as logs:
        await asyncio.wait_for(daemon.router.stop(), 10)
    took = time.monotonic() - started
    assert 0.45 <= took < 3, took
    assert await asyncio.wait_for(reader.read(), 5) == b""  # cut: never answered, not accepted
    assert {"event": "stop_grace_over", "log_level": "warning", "requests_cut_short": 1} in logs


async def test_a_stop_with_nothing_under_way_does_not_wait(daemon: Daemon) -> None:
    assert (await post_customer(daemon, "m1"))[0] == 202  # leaves a keep-alive connection
    started = time.monotonic()
    await daemon.router.stop()
    assert time.monotonic() - started < 1.0


async def test_expect_100_continue_while_stopping_is_503_before_the_body(
    daemon: Daemon, upload: list[asyncio.StreamWriter]
) -> None:
    admission = daemon.router.public_runner.app[ADMISSION]  # type: ignore[union-attr]
    admission.stopping = True
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.router.public_port)
    upload.append(writer)
    writer.write(HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 503 "), head  # and no 100 Continue before it
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    assert orjson.loads(body)["error"] == "stopping"
    admission.stopping = False


# -- the real daemon and its signal --------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigterm_waits_for_an_upload_within_the_grace_then_exits(
    peers: Peers, tmp_path: Path, upload: list[asyncio.StreamWriter]
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    port, debug = free_ports(2)
    config["server"].update(port=port, stop_grace_s=10.0)
    config["debug"]["port"] = debug
    path = tmp_path / "router.toml"
    path.write_text(toml_document(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--config", str(path)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port = config["server"]["port"]
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(20):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{config['debug']['port']}/healthz"):
                        break
                await asyncio.sleep(0.05)
        reader, writer = await start_upload(port, upload)
        await asyncio.sleep(0.2)  # the request is read up to its body
        proc.send_signal(signal.SIGTERM)
        status = 0
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(10):
                while status != 503:  # the port answers, and refuses new work
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"http://127.0.0.1:{port}/v1/admin/ccsp") as answer:
                            status = answer.status
                            retry = answer.headers.get("Retry-After")
        assert (status, retry) == (503, "10")
        assert proc.poll() is None
        writer.write(BODY[20:])
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 202 "), answer
        started = time.monotonic()
        async with asyncio.timeout(10):
            while proc.poll() is None:
                await asyncio.sleep(0.02)
        assert proc.returncode == 0
        assert time.monotonic() - started < 5  # once the upload is in, nothing is waited for
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
