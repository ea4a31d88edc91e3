"""`router peers`: the example peers carry a whole conversation with a real router."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.cli import main
from router.config.settings import parse_config
from router.daemon import Router
from router.loadtest.command import free_port, free_ports
from router.peers.serve import RunningPeers, start_peers, stop_peers

ASSET = "asset-secret"


def example_config(store: Path, public: int, peers: int) -> dict[str, Any]:
    at = f"http://127.0.0.1:{peers}"
    return {
        "server": {"host": "127.0.0.1", "port": public},
        "debug": {"host": "127.0.0.1", "port": 0},
        "admin": {"token": "admin-secret"},
        "store": {"path": str(store)},
        "delivery": {"timeout_s": 5.0, "retry_delays_s": [0.05, 0.05]},
        # No webhook tokens: the router generates them and the peers ask the admin API.
        "integrations": [
            {"id": "support-bot", "name": "Support", "url": f"{at}/bot", "access_token": "b"}
        ],
        "ccsp": [{"id": "agents", "url": f"{at}/ccsp", "access_token": "c"}],
        "flows": [{"id": "crm", "url": f"{at}/flow"}],
        "assets": [
            {
                "id": "fb-page-1",
                "channel": "FB",
                "service": "support",
                "outbound_url": f"{at}/out",
                "token": ASSET,
            }
        ],
        "services": [
            {
                "id": "support",
                "rules": [
                    {
                        "on": "incoming_message",
                        "action": "forward_to_bot_ccsp",
                        "bot": "support-bot",
                        "ccsp": "agents",
                    },
                    {"on": "handover", "action": "invoke_flow", "flow": "crm"},
                ],
            }
        ],
    }


class Scene:
    def __init__(self, router: Router, peers: RunningPeers, out: io.StringIO) -> None:
        self.router, self.peers, self.out = router, peers, out
        self.session = aiohttp.ClientSession()
        self.sent = 0

    async def say(self, text: str) -> None:
        self.sent += 1
        body = {"Event": "Incoming message", "Userid": "u1", "Message": text}
        body["Messageid"] = f"m{self.sent}"
        url = f"http://127.0.0.1:{self.router.public_port}/v1/channels/fb-page-1/events"
        headers = {"Authorization": f"Bearer {ASSET}"}
        async with self.session.post(url, json=body, headers=headers) as answer:
            assert answer.status == 202, await answer.text()

    async def shown(self, text: str, after: int = 0) -> int:
        """Where `text` first appears in the peers' output after position `after`."""
        async with asyncio.timeout(10):
            while (at := self.out.getvalue().find(text, after)) < 0:
                await asyncio.sleep(0.02)
        return at


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    config = parse_config(example_config(tmp_path / "r.db", *free_ports(2)), "example.toml")
    router = Router(config)
    await router.start()
    out = io.StringIO()
    peers = await start_peers(config, out, close_after=2)
    found = Scene(router, peers, out)
    try:
        yield found
    finally:
        await found.session.close()
        await stop_peers(peers)
        await router.stop()


async def step(scene: Scene, text: str, *expected: str) -> None:
    """Say `text`; each expected line appears after it. The peers print from their own tasks,
    so lines of different peers may come in any order: only what the customer sees is in the
    order it was sent."""
    mark = len(scene.out.getvalue())
    await scene.say(text)
    for line in expected:
        await scene.shown(line, mark)


async def test_a_conversation_goes_from_bot_to_agent_and_back_and_ends(scene: Scene) -> None:
    await step(scene, "hi", 'FB to u1               You said "hi".')
    await step(
        scene,
        "I want an agent",
        "handed over to an agent",
        "FB to u1               Hi, I am Alex, an agent.",
    )
    await step(scene, "my order is late", 'FB to u1               Noted: "my order is late".')
    await step(
        scene,
        "thanks",
        "FB to u1               Glad I could help. Handing you back to the bot.",
        "the agent left (agent)",
        "FB to u1               The bot again: anything else?",
    )
    customer = [line for line in scene.out.getvalue().splitlines() if line.startswith("FB to")]
    assert customer[-2:] == [
        "FB to u1               Glad I could help. Handing you back to the bot.",
        "FB to u1               The bot again: anything else?",
    ]
    await step(scene, "bye", "FB to u1               Goodbye!", "closed the conversation")
    # The handover rule's flow heard of the handover too.
    await scene.shown("flow crm")


async def test_the_peers_refuse_a_caller_without_the_access_token(scene: Scene) -> None:
    host, port = scene.peers.addresses[0]
    async with scene.session.post(f"http://{host}:{port}/bot", json={"Event": "Verify"}) as r:
        assert r.status == 401


def test_the_command_names_a_bad_config_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    assert main(["peers", "--config", str(bad)]) == 2
    assert "config error" in capsys.readouterr().err


def test_the_command_serves_until_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "peers.toml"
    port = free_port()
    config.write_text(
        f"""
[server]
port = {free_port()}
[admin]
token = "a"
[store]
path = "{tmp_path / "r.db"}"
[[integrations]]
id = "b"
name = "B"
url = "http://127.0.0.1:{port}/bot"
access_token = "t"
"""
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "router.cli",
            "peers",
            "--config",
            str(config),
            "--close-after",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert f"listening on 127.0.0.1:{port}" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
