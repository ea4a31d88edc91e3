"""Limits before work: a body too large or compressed is refused from its headers (before any
`100 Continue`), JSON nesting is checked before parsing, and intake rates (per asset,
integration and CCSP once authenticated; per client address, behind trusted proxies by
`X-Forwarded-For`) answer `429` with `Retry-After`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.domain.rate_limit import RateLimiter, retry_after
from router.http.util import MAX_JSON_DEPTH, json_depth, nests_too_deep
from tests.clock import ManualClock
from tests.conftest import ASSET_TOKEN, Daemon, Peers, StartRouter, base_config
from tests.test_restart import toml_document

EVENTS = "/v1/channels/fb-page-1/events"


def message(message_id: str, user: str = "u1") -> dict[str, Any]:
    return {"Event": "Incoming message", "Userid": user, "Message": "hi", "Messageid": message_id}


Exchange = Callable[[int, bytes], Awaitable[tuple[bytes, bytes]]]


@pytest.fixture
async def exchange() -> AsyncIterator[Exchange]:
    """Send raw bytes; read one answer (head, body) as soon as it is whole."""
    writers: list[asyncio.StreamWriter] = []

    async def send(port: int, data: bytes) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(data)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            return head, await reader.readexactly(length)

    yield send
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def post(path: str, length: int, *extra: str, token: str = ASSET_TOKEN) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: x",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- size and encoding, from the headers ---------------------------------------------------


async def test_a_declared_length_over_the_limit_is_413_before_the_body_is_sent(
    daemon: Daemon, exchange: Exchange
) -> None:
    head, body = await exchange(daemon.router.public_port, post(EVENTS, 10_000_000))
    assert head.startswith(b"HTTP/1.1 413 ")
    assert orjson.loads(body) == {
        "error": "body_too_large",
        "message": "the body is larger than the limit of 4096 bytes",
    }


@pytest.mark.parametrize(
    "path",
    ["/v1/channels/fb-page-1/events", "/v1/bots/support-bot/bot-hook", "/v1/admin/integrations"],
)
async def test_expect_100_continue_with_a_body_too_large_is_413_and_no_100(
    daemon: Daemon, exchange: Exchange, path: str
) -> None:
    head, body = await exchange(
        daemon.router.public_port, post(path, 10_000_000, "Expect: 100-continue")
    )
    assert head.startswith(b"HTTP/1.1 413 "), head  # the first line back: no 100 before it
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["error"] == "body_too_large"


async def test_expect_100_continue_within_the_limit_gets_its_100(
    daemon: Daemon, peers: Peers
) -> None:
    raw = orjson.dumps(message("m1"))
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.router.public_port)
    try:
        writer.write(post(EVENTS, len(raw), "Expect: 100-continue"))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 202 ")
    finally:
        writer.close()
        await writer.wait_closed()
    await peers.bot.wait_for(1)


async def test_an_unknown_expectation_is_a_json_417(daemon: Daemon, exchange: Exchange) -> None:
    head, body = await exchange(daemon.router.public_port, post(EVENTS, 10, "Expect: magic"))
    assert head.startswith(b"HTTP/1.1 417 ")
    assert orjson.loads(body)["error"] == "expectation_failed"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "gzip, identity"])
async def test_a_compressed_body_is_415_before_it_is_read(
    daemon: Daemon, exchange: Exchange, encoding: str
) -> None:
    # Only the headers are sent: the answer does not wait for a body to inflate.
    head, body = await exchange(
        daemon.router.public_port, post(EVENTS, 1000, f"Content-Encoding: {encoding}")
    )
    assert head.startswith(b"HTTP/1.1 415 ")
    assert orjson.loads(body)["error"] == "unsupported_encoding"


async def test_identity_encoding_is_a_body_as_it_is(daemon: Daemon, exchange: Exchange) -> None:
    raw = orjson.dumps(message("m1"))
    head, _ = await exchange(
        daemon.router.public_port, post(EVENTS, len(raw), "Content-Encoding: identity") + raw
    )
    assert head.startswith(b"HTTP/1.1 202 ")


# -- JSON nesting, before parsing ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '"x"',
        "1",
        "[]",
        "{}",
        "[[]]",
        '{"a": [{}, 1]}',
        '["[[[[", "]]]]"]',
        '{"k\\"[": "\\\\[{["}',
        "[" * 64 + "]" * 64,
        "[" * 65 + "]" * 65,
        '{"a":' * 65 + "1" + "}" * 65,
        "[[]," * 40 + "1" + "]" * 40,
    ],
)
def test_nesting_read_from_the_bytes_agrees_with_the_parsed_value(text: str) -> None:
    deep = json_depth(orjson.loads(text)) > MAX_JSON_DEPTH
    assert nests_too_deep(text.encode()) == deep


# -- intake rates --------------------------------------------------------------------------


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    limiter = RateLimiter()
    assert [limiter.take("a", 0.0, 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0, 2.0, 3) == 0.5
    assert limiter.take("a", 0.5, 2.0, 3) == 0.0
    assert limiter.take("b", 0.5, 2.0, 3) == 0.0  # each key its own bucket
    assert limiter.take("a", 100.0, 2.0, 3) == 0.0  # refilled, never past the burst
    assert [limiter.take("a", 100.0, 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.take("a", 0.0, 0.0, 1) == 0.0  # a rate of 0 is no limit
    assert (retry_after(0.01), retry_after(1.0), retry_after(1.2)) == (1, 1, 2)


def test_a_limiter_keeps_a_bounded_number_of_buckets() -> None:
    limiter = RateLimiter(max_keys=100)
    for n in range(10_000):
        limiter.take(f"203.0.113.{n}", float(n), 1.0, 5)
    assert len(limiter) <= 100


def limited(peers: Peers, tmp_path: Path, **limits: Any) -> dict[str, Any]:
    config = base_config(peers, tmp_path / "router.db")
    config["limits"] = limits
    return config


async def test_an_asset_over_its_rate_gets_429_with_retry_after(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = await start_router(
        limited(peers, tmp_path, asset_rate_per_s=0.5, asset_burst=2), clock
    )
    # Callers without the token spend nothing of the asset's allowance.
    for n in range(5):
        assert (await daemon.post(EVENTS, message(f"x{n}"), "wrong"))[0] == 401
    assert (await daemon.customer("a", "m1"))[0] == 202
    assert (await daemon.customer("b", "m2"))[0] == 202
    async with daemon.session.post(
        daemon.public + EVENTS,
        json=message("m3"),
        headers={"Authorization": f"Bearer {ASSET_TOKEN}"},
    ) as answer:
        assert (answer.status, answer.headers["Retry-After"]) == (429, "2")
        assert await answer.json() == {
            "error": "rate_limited",
            "message": "this asset is over its request rate; try again in 2 s",
        }
    assert (await daemon.customer("c", "m3", asset="sms-1"))[0] == 202  # another asset
    clock.advance(2.0)
    assert (await daemon.customer("c", "m3"))[0] == 202
    _, metrics = await daemon.get_debug("/metrics")
    assert 'router_inbound_events_total{channel="FB",result="rate_limited",source="channel"}' in (
        metrics
    )


async def test_a_bot_and_a_ccsp_over_their_rates_get_429(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = await start_router(
        limited(
            peers,
            tmp_path,
            integration_rate_per_s=1.0,
            integration_burst=1,
            ccsp_rate_per_s=1.0,
            ccsp_burst=1,
        ),
        clock,
    )
    close = {"Event": "Close", "conversation_id": "nope"}
    assert (await daemon.bot(close))[0] == 404  # counted: it was authenticated
    status, body = await daemon.bot(close)
    assert (status, body["error"]) == (429, "rate_limited")
    assert (await daemon.bot(close, token="wrong"))[0] == 401
    agent = {"Event": "Close", "Conversationid": "nope"}
    assert (await daemon.agent(agent))[0] == 404
    status, body = await daemon.agent(agent)
    assert (status, body["message"]) == (
        429,
        "this CCSP is over its request rate; try again in 1 s",
    )
    clock.advance(1.0)
    assert (await daemon.bot(close))[0] == 404


async def test_per_address_limits_believe_x_forwarded_for_only_from_trusted_proxies(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    config = limited(peers, tmp_path, address_rate_per_s=1.0, address_burst=2)
    daemon = await start_router(config, clock)

    async def from_(forwarded: str) -> int:
        async with daemon.session.get(
            daemon.public + "/v1/admin/ccsp",
            headers={"Authorization": "Bearer admin-secret", "X-Forwarded-For": forwarded},
        ) as answer:
            return answer.status

    # 127.0.0.1 is no trusted proxy: every request is its own, whatever it claims.
    assert [await from_(f"198.51.100.{n}") for n in range(3)] == [200, 200, 429]
    await daemon.router.stop()

    config["server"]["trusted_proxies"] = ["127.0.0.0/8", "10.0.0.0/8"]
    daemon = await start_router(config, clock)
    assert [await from_("198.51.100.7") for _ in range(3)] == [200, 200, 429]
    assert await from_("198.51.100.8") == 200  # another client behind the same proxy
    # A client cannot pick its own address: the nearest untrusted hop is the one counted.
    assert await from_("203.0.113.1, 198.51.100.7") == 429
    assert await from_("198.51.100.7, 10.1.2.3") == 429  # behind two trusted proxies
    assert await from_("not an address") == 200  # a first, untrusted "address"
    clock.advance(1.0)
    assert await from_("198.51.100.7") == 200


async def test_a_reload_applies_new_rates_to_the_next_request(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    config = limited(peers, tmp_path, asset_rate_per_s=1.0, asset_burst=1)
    daemon = await start_router(config, clock)
    assert (await daemon.customer("a", "m1"))[0] == 202
    assert (await daemon.customer("b", "m2"))[0] == 429
    config["limits"] = {"asset_rate_per_s": 0}  # no limit
    path = tmp_path / "router.toml"
    path.write_text(toml_document(config))
    assert await daemon.router.reload(path)
    assert (await daemon.customer("b", "m2"))[0] == 202
