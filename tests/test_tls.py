"""HTTPS on the public port (`server.tls_cert`, `server.tls_key`): events are accepted over
it, webhook URLs say https, and a client that never finishes its handshake is cut at the
header deadline and counted under the caps like any other. And deliveries to https peers:
verified against the trust store."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.daemon import StartError
from router.io.http1 import CannotConnect, Http1Client
from tests.conftest import ASSET_TOKEN, Peers, StartRouter, base_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def tls_config(peers: Peers, tmp_path: Path, cert: Path, key: Path, **server: Any) -> Any:
    config = base_config(peers, tmp_path / "router.db")
    config["server"].update(tls_cert=str(cert), tls_key=str(key), **server)
    return config


async def test_events_are_accepted_over_https(
    start_router: StartRouter, peers: Peers, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    daemon = await start_router(tls_config(peers, tmp_path, cert, key))
    assert daemon.router.public_url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(cert))
    body = {"Event": "Incoming message", "Userid": "u1", "Message": "hi", "Messageid": "m1"}
    url = f"https://127.0.0.1:{daemon.router.public_port}/v1/channels/sms-1/events"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, json=body, headers={"Authorization": f"Bearer {ASSET_TOKEN}"}, ssl=trusted
        ) as answer,
    ):
        assert (answer.status, await answer.json()) == (202, {"accepted": True})
    [got] = await peers.bot.wait_for(1)
    assert got["Message"] == "hi"


async def test_a_client_that_never_finishes_its_handshake_is_cut_and_counted(
    start_router: StartRouter, peers: Peers, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    config = tls_config(
        peers, tmp_path, cert, key, header_timeout_s=0.5, max_connections_per_address=1
    )
    daemon = await start_router(config)
    port = daemon.router.public_port
    limits = daemon.router.listeners["public"].limits
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    try:
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        async with asyncio.timeout(5):
            while limits.open != 1:
                await asyncio.sleep(0.01)
        # While it hangs in its handshake, it holds its address's one place.
        refused, second = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        async with asyncio.timeout(5):
            assert await refused.read() == b""  # refused without a word: no TLS to say it in
        second.close()
        await second.wait_closed()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # cut at the deadline
            while limits.open != 0:
                await asyncio.sleep(0.01)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    _, metrics = await daemon.get_debug("/metrics")
    assert 'router_http_connections_closed_total{port="public",reason="tls_handshake"} 1.0' in (
        metrics
    )


async def test_a_plain_http_request_to_the_https_port_gets_nowhere(
    start_router: StartRouter, peers: Peers, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    daemon = await start_router(tls_config(peers, tmp_path, cert, key))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{daemon.router.public_port}/v1/admin/ccsp"):
                pass
    assert peers.bot.received == []


async def test_a_key_that_does_not_load_stops_the_start(
    start_router: StartRouter, peers: Peers, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, _ = certificate
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(StartError, match=r"cannot load server\.tls_cert and tls_key"):
        await start_router(tls_config(peers, tmp_path, cert, tmp_path / "bad.pem"))


async def test_deliveries_go_out_over_https_and_refuse_a_peer_nobody_vouches_for(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def hook(request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json()})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=served)
    url = f"https://127.0.0.1:{server.port}/hook"
    trusting = Http1Client(user_agent="test", ssl_context=ssl.create_default_context(cafile=cert))
    default = Http1Client(user_agent="test")
    try:
        reply = await trusting.post(url, {}, b'{"a": 1}', timeout=5, cap=1024)
        assert (reply.status, reply.body) == (200, b'{"got": {"a": 1}}')
        with pytest.raises(CannotConnect, match="CERTIFICATE_VERIFY_FAILED"):
            await default.post(url, {}, b"{}", timeout=5, cap=1024)
    finally:
        await trusting.close()
        await default.close()
        await server.close()
