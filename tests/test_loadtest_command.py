"""`router loadtest` as a user runs it: a real router, real peers, a verdict and its exit code."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from rich.console import Console

from router.loadtest.command import free_port, free_ports
from router.loadtest.driver import Tally
from router.loadtest.live import progress
from router.loadtest.setup import router_config
from router.loadtest.verdict import Sent
from tests.processes import serving


def loadtest(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "router.cli", "loadtest", "--json", *args],
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout.decode()
    return proc.returncode, (orjson.loads(out) if out.strip() else {}), proc.stderr.decode()


@pytest.fixture
def external(tmp_path: Path) -> Iterator[tuple[str, int, str]]:
    """A router already running, started apart from the load test, its peers on `port`."""
    port, debug, peers = free_ports(3)
    config = tmp_path / "router.toml"
    rule = "forward_to_bot_ccsp"
    config.write_text(
        router_config(port, debug, f"http://127.0.0.1:{peers}", tmp_path / "r.db", rule)
    )
    with serving(config, port) as url:
        yield url, peers, str(config)


def test_a_mixed_load_arrives_whole_and_in_order_and_is_charted(tmp_path: Path) -> None:
    chart = tmp_path / "load.png"
    mix = "reply=0.5,handover=0.2,bot_close=0.05,report=0.5,agent_reply=0.7,agent_close=0.2"
    code, found, err = loadtest(
        "--count",
        "400",
        "--rate",
        "400",
        "--conversations",
        "40",
        "--concurrency",
        "8",
        "--mix",
        mix,
        "--seed",
        "3",
        "--plot",
        str(chart),
        "--no-progress",
    )
    assert code == 0, (found, err)
    assert found["ok"] and found["drained"]
    assert found["sent"] == 400 and found["lost"] == 0 and found["misordered"] == 0
    assert found["accepted"] > 400  # the peers' replies, handovers, agent messages and reports
    assert found["delivered"] == found["accepted"] - found["excused"]
    assert found["seconds"] >= 0.9  # 400 at 400/s
    for leg in (
        "intake",
        "intake_to_bot",
        "reply_to_channel",
        "handover_to_ccsp",
        "agent_to_channel",
    ):
        assert found["legs"][leg]["count"] > 0, leg
        assert 0 < found["legs"][leg]["p50_ms"] <= found["legs"][leg]["p99_ms"]
    assert set(found) >= {"duplicates", "errors", "rate_msg_s", "throughput_msg_s"}
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_the_intake_to_bot_profile_sends_customer_messages_only() -> None:
    code, found, err = loadtest("--profile", "intake-to-bot", "--duration", "1")
    assert code == 0, (found, err)
    assert found["accepted"] == found["sent"] == found["delivered"] > 0
    assert set(found["legs"]) == {"intake", "intake_to_bot"}


def test_a_router_already_running_is_driven_through_its_peers(
    external: tuple[str, int, str],
) -> None:
    url, peers, _ = external
    code, found, err = loadtest(
        "--router",
        url,
        "--peers-port",
        str(peers),
        "--asset",
        "lt-asset",
        "--asset-token",
        "lt-asset-token",
        "--bot-webhook",
        f"{url}/v1/bots/lt-bot/lt-bot-hook",
        "--ccsp-webhook",
        f"{url}/v1/ccsp/lt-agents/lt-ccsp-hook",
        "--count",
        "150",
        "--concurrency",
        "4",
        "--conversations",
        "10",
    )
    assert code == 0, (found, err)
    assert found["ok"] and found["sent"] == 150 and found["lost"] == 0


def test_messages_that_never_arrive_are_lost_and_the_exit_status_says_so(
    external: tuple[str, int, str],
) -> None:
    url, _, _ = external
    # The peers listen where the router does not deliver: nothing accepted can arrive.
    code, found, _ = loadtest(
        "--router",
        url,
        "--peers-port",
        str(free_port()),
        "--count",
        "20",
        "--concurrency",
        "2",
        "--conversations",
        "5",
        "--drain-timeout",
        "1",
    )
    assert code == 1
    assert (found["ok"], found["drained"], found["accepted"], found["lost"]) == (
        False,
        False,
        20,
        20,
    )
    assert len(found["lost_examples"]) == 10


def test_a_bad_mix_is_refused_before_anything_starts() -> None:
    code, _, err = loadtest("--mix", "replies=2")
    assert code == 2 and "--mix" in err and "replies=2" in err


async def test_the_live_display_shows_rate_in_flight_errors_and_latency() -> None:
    tally = Tally()
    tally.sent, tally.answered = 12, 10
    tally.accepted = [Sent(f"c.u1.{n}", "c.u1", n) for n in range(1, 11)]
    tally.intake = [(time.monotonic(), 2.0 + n) for n in range(10)]
    tally.errors["intake: 503 store_unavailable"] += 1
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    async with aiohttp.ClientSession() as session:
        sending = asyncio.create_task(asyncio.sleep(1.2))
        await progress(session, f"http://127.0.0.1:{free_port()}", tally, sending, console)
    shown = out.getvalue()
    for text in (
        "sent / accepted",
        "12 / 10",
        "in flight",
        "errors",
        "intake p50 / p99",
        "accepted/s",
        "arrived at bot",
    ):
        assert text in shown, text
