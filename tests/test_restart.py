"""The real daemon as a subprocess, killed with SIGKILL: nothing it accepted is lost."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.loadtest.command import free_ports
from tests.conftest import ADMIN, ASSET_TOKEN, Peers, base_config

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
DELIVERY_TIMEOUT = 15.0
POLL = 0.02


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"no TOML form for {value!r}")


def toml_document(config: dict[str, Any]) -> str:
    text = "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in config.items())
    assert tomllib.loads(text) == config
    return text


class RouterProcess:
    """One `router serve` subprocess, its stderr in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, public: str, debug: str) -> None:
        self.proc = proc
        self.log = log
        self.public = public
        self.debug = debug

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        async with asyncio.timeout(timeout):
            while (code := self.proc.poll()) is None:
                await asyncio.sleep(POLL)
        return code

    async def kill(self) -> None:
        self.proc.kill()
        assert await self.wait() == -signal.SIGKILL

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait()


class Launcher:
    """Writes the config, starts daemons on it, and talks to them over HTTP."""

    def __init__(self, peers: Peers, tmp_path: Path, session: aiohttp.ClientSession) -> None:
        self.peers = peers
        self.tmp_path = tmp_path
        self.session = session
        self.public_port, self.debug_port = free_ports(2)
        self.config_path = tmp_path / "router.toml"
        self.running: list[RouterProcess] = []

    def write_config(self, **delivery: Any) -> None:
        config = base_config(self.peers, self.tmp_path / "router.db", **delivery)
        config["server"]["port"] = self.public_port
        config["debug"]["port"] = self.debug_port
        self.config_path.write_text(toml_document(config))

    async def start(self) -> RouterProcess:
        log = self.tmp_path / f"router-{len(self.running) + 1}.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "router.cli", "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=self.tmp_path,
            )
        daemon = RouterProcess(
            proc, log, f"http://127.0.0.1:{self.public_port}", f"http://127.0.0.1:{self.debug_port}"
        )
        self.running.append(daemon)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not await self._healthy(daemon):
                    assert proc.poll() is None, f"the daemon exited:\n{daemon.output()}"
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"the daemon did not answer /healthz:\n{daemon.output()}")
        return daemon

    async def _healthy(self, daemon: RouterProcess) -> bool:
        try:
            async with self.session.get(daemon.debug + "/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def stop_all(self) -> None:
        for daemon in self.running:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
            try:
                await daemon.wait()
            except TimeoutError:
                daemon.proc.wait(timeout=STOP_TIMEOUT)

    async def customer(self, daemon: RouterProcess, user: str, message_id: str) -> int:
        body = {
            "Event": "Incoming message",
            "Userid": user,
            "Message": f"text of {message_id}",
            "MessageType": "text",
            "Messageid": message_id,
        }
        async with self.session.post(
            daemon.public + "/v1/channels/fb-page-1/events",
            json=body,
            headers={"Authorization": f"Bearer {ASSET_TOKEN}"},
        ) as resp:
            await resp.read()
            return resp.status

    async def get_debug(self, daemon: RouterProcess, path: str) -> Any:
        async with self.session.get(daemon.debug + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def integration(self, daemon: RouterProcess, integration_id: str) -> dict[str, Any]:
        items = await self.get_debug(daemon, "/debug/integrations")
        [found] = [i for i in items if i["id"] == integration_id]
        return dict(found)


@pytest.fixture
async def launcher(peers: Peers, tmp_path: Path) -> AsyncIterator[Launcher]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    found = Launcher(peers, tmp_path, session)
    try:
        yield found
    finally:
        try:
            await found.stop_all()
        finally:
            await session.close()


def message_ids(peers: Peers) -> list[str]:
    return [str(body["Messageid"]) for body in peers.bot.bodies]


async def until_delivered(peers: Peers, expected: list[str]) -> None:
    try:
        async with asyncio.timeout(DELIVERY_TIMEOUT):
            while not set(expected) <= set(message_ids(peers)):
                await asyncio.sleep(POLL)
    except TimeoutError:
        missing = sorted(set(expected) - set(message_ids(peers)))
        pytest.fail(f"never delivered to the bot: {missing}")


def assert_in_order_per_user(peers: Peers, sent: dict[str, list[str]]) -> None:
    delivered = message_ids(peers)
    for user, ids in sent.items():
        wanted = set(ids)
        first_seen = list(dict.fromkeys(m for m in delivered if m in wanted))
        assert first_seen == ids, f"{user}: delivered {first_seen}, sent {ids}"


def conversation_per_user(peers: Peers, sent: dict[str, list[str]]) -> dict[str, set[str]]:
    owner = {m: user for user, ids in sent.items() for m in ids}
    found: dict[str, set[str]] = {user: set() for user in sent}
    for body in peers.bot.bodies:
        found[owner[body["Messageid"]]].add(body["Conversationid"])
    return found


async def test_kill_9_loses_nothing_accepted(launcher: Launcher, peers: Peers) -> None:
    launcher.write_config(retry_delays_s=[0.2] * 8, inactive_after_failures=100_000)
    peers.bot.script = [503] * 10_000
    first = await launcher.start()

    sent: dict[str, list[str]] = {"alice": [], "bob": []}
    for i in range(20):
        user = "alice" if i % 2 == 0 else "bob"
        message_id = f"{user}-{i:02d}"
        status = await launcher.customer(first, user, message_id)
        assert status == 202, first.output()
        sent[user].append(message_id)
    await first.kill()
    assert peers.bot.received == []

    peers.bot.script.clear()
    second = await launcher.start()
    await until_delivered(peers, [m for ids in sent.values() for m in ids])
    assert_in_order_per_user(peers, sent)
    conversations = conversation_per_user(peers, sent)
    assert all(len(ids) == 1 for ids in conversations.values()), conversations
    assert await second.terminate() == 0, second.output()


async def test_retry_schedule_survives_restart(launcher: Launcher, peers: Peers) -> None:
    launcher.write_config(retry_delays_s=[1.5, 1.5, 1.5, 1.5])
    peers.bot.script = [503]
    first = await launcher.start()
    assert await launcher.customer(first, "alice", "m-1") == 202

    async with asyncio.timeout(DELIVERY_TIMEOUT):
        while True:
            listing = await launcher.get_debug(first, "/debug/conversations")
            if listing["conversations"]:
                [summary] = listing["conversations"]
                view = await launcher.get_debug(
                    first, f"/debug/conversations/{summary['conversation_id']}"
                )
                if view["deliveries"] and view["deliveries"][0]["attempt"] >= 1:
                    break
            await asyncio.sleep(POLL)
    [delivery] = view["deliveries"]
    assert delivery["destination"] == "bot:support-bot"
    assert delivery["status"] == "retrying"
    assert delivery["attempt"] >= 1
    assert delivery["last_error"] == "HTTP 503"
    assert delivery["next_attempt_at"] is not None
    due = datetime.fromisoformat(delivery["next_attempt_at"]).timestamp()
    assert time.time() < due, "the retry was already due before the kill"
    await first.kill()
    assert peers.bot.received == []
    assert peers.bot.attempts == 1

    second = await launcher.start()
    [body] = await peers.bot.wait_for(1, timeout=DELIVERY_TIMEOUT)
    seen_at = time.time()
    assert body["Messageid"] == "m-1"
    assert body["Conversationid"] == summary["conversation_id"]
    assert seen_at >= due, "the retry ran before its scheduled time"
    assert peers.bot.attempts == 2

    path = f"/debug/conversations/{summary['conversation_id']}"
    async with asyncio.timeout(DELIVERY_TIMEOUT):
        while (await launcher.get_debug(second, path))["deliveries"]:
            await asyncio.sleep(POLL)
    assert await second.terminate() == 0, second.output()


async def test_parked_deliveries_survive_restart(launcher: Launcher, peers: Peers) -> None:
    launcher.write_config(inactive_after_failures=2)
    peers.bot.script = [503] * 1_000
    first = await launcher.start()

    sent = {"alice": ["a-1", "a-2", "a-3"], "bob": ["b-1", "b-2"]}
    for user, ids in sent.items():
        for message_id in ids:
            assert await launcher.customer(first, user, message_id) == 202
    total = sum(len(ids) for ids in sent.values())

    async with asyncio.timeout(DELIVERY_TIMEOUT):
        while True:
            health = await launcher.integration(first, "support-bot")
            if health["state"] == "inactive" and health["parked"] == total:
                break
            await asyncio.sleep(POLL)
    await first.kill()
    assert peers.bot.received == []
    attempts_before = peers.bot.attempts

    peers.bot.script.clear()
    second = await launcher.start()
    health = await launcher.integration(second, "support-bot")
    assert health["state"] == "inactive"
    assert health["parked"] == total
    assert peers.bot.received == []
    assert peers.bot.attempts == attempts_before

    async with launcher.session.post(
        second.public + "/v1/admin/integrations/support-bot/verify",
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["state"] == "active"

    await until_delivered(peers, [m for ids in sent.values() for m in ids])
    assert_in_order_per_user(peers, sent)
    assert sorted(message_ids(peers)) == sorted(m for ids in sent.values() for m in ids)

    async with asyncio.timeout(DELIVERY_TIMEOUT):
        while (await launcher.integration(second, "support-bot"))["parked"]:
            await asyncio.sleep(POLL)
    assert (await launcher.integration(second, "support-bot"))["state"] == "active"
    assert await second.terminate() == 0, second.output()
