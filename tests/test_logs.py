"""Logs: no secret in any line or error body over a whole scenario; every line about a
conversation says which (ID, integration, asset); JSON lines off a terminal; and nothing
logged per message on the path every message takes."""

from __future__ import annotations

import asyncio
import io
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from router import logs
from router.cli import build_parser
from tests.clock import ManualClock
from tests.conftest import ADMIN, Daemon, Peers, StartRouter, base_config
from tests.test_restart import Launcher, launcher  # noqa: F401  (the fixture)

DELAYS = [60, 300, 900, 2340]
ABOUT = ("conversation_id", "integration", "asset")

# Each secret the daemon is given, spelled so that no other text can contain it by chance.
SECRETS = {
    "asset token": "tok-asset-Q7vX2m",
    "bot access token": "tok-bot-access-Lp4r9",
    "bot webhook token": "tok-bot-hook-Hd81kz",
    "CCSP access token": "tok-ccsp-access-Ww3n",
    "CCSP webhook token": "tok-ccsp-hook-Bc56tq",
    "admin token": "tok-admin-Zr90ye",
}


def secret_config(peers: Peers, store: Path) -> dict[str, Any]:
    config = base_config(
        peers, store, retry_delays_s=DELAYS, inactive_after_failures=2, timeout_s=5.0
    )
    config["admin"]["token"] = SECRETS["admin token"]
    [bot] = config["integrations"]
    bot["access_token"] = SECRETS["bot access token"]
    bot["webhook_token"] = SECRETS["bot webhook token"]
    [ccsp] = config["ccsp"]
    ccsp["access_token"] = SECRETS["CCSP access token"]
    ccsp["webhook_token"] = SECRETS["CCSP webhook token"]
    for asset in config["assets"]:
        asset["token"] = SECRETS["asset token"]
    return config


class Calls:
    """The daemon's HTTP doors with the scenario's secrets, keeping every answer."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.answers: list[tuple[int, Any]] = []

    def keep(self, answer: tuple[int, Any]) -> tuple[int, Any]:
        self.answers.append(answer)
        return answer

    async def customer(
        self, text: str, message_id: str, token: str = SECRETS["asset token"]
    ) -> tuple[int, Any]:
        body = {
            "Event": "Incoming message",
            "Userid": "u1",
            "Message": text,
            "Messageid": message_id,
        }
        return self.keep(await self.daemon.post("/v1/channels/fb-page-1/events", body, token))

    async def bot(
        self, body: dict[str, Any], token: str = SECRETS["bot webhook token"]
    ) -> tuple[int, Any]:
        return self.keep(await self.daemon.bot(body, token=token))

    async def agent(
        self, body: dict[str, Any], token: str = SECRETS["CCSP webhook token"]
    ) -> tuple[int, Any]:
        return self.keep(await self.daemon.agent(body, token=token))

    async def admin(
        self, method: str, path: str, token: str = SECRETS["admin token"]
    ) -> tuple[int, Any]:
        return self.keep(await self.daemon.admin(method, path, token=token))

    async def raw(self, path: str, raw: bytes, token: str | None = None) -> tuple[int, Any]:
        return self.keep(await self.daemon.post(path, None, token, raw=raw))


async def until_pending(daemon: Daemon, clock: ManualClock, expected: list[float]) -> None:
    async def due() -> bool:
        return clock.pending() == expected

    await daemon.until(due)


async def bot_state(daemon: Daemon) -> str:
    _, items = await daemon.get_debug("/debug/integrations")
    return str(next(i for i in items if i["id"] == "support-bot")["state"])


async def whole_scenario(daemon: Daemon, peers: Peers, clock: ManualClock) -> str:
    """Customer, bot, handover, agent, close; failed deliveries with retries; a bot taken out
    of service and verified again; wrong tokens and bad bodies. Returns the conversation ID."""
    calls = Calls(daemon)
    # The bot fails twice: a retry, then it is out of service and the message parked.
    peers.bot.script = [500, 500]
    assert (await calls.customer("hello", "m1"))[0] == 202
    await until_pending(daemon, clock, [60.0])
    clock.advance(60)

    async def inactive() -> bool:
        return await bot_state(daemon) == "inactive"

    await daemon.until(inactive)
    peers.bot.verify = "wrong"
    assert (await calls.admin("POST", "/v1/admin/integrations/support-bot/verify"))[0] == 422
    peers.bot.verify = "echo"
    assert (await calls.admin("POST", "/v1/admin/integrations/support-bot/verify"))[0] == 200
    [first] = await peers.bot.wait_for(1)
    cid = first["Conversationid"]
    # The bot replies; the customer's channel fails every attempt: retries, then a dead letter.
    peers.channel.script = [500] * 5
    assert (await calls.bot({"eventid": "1001", "conversation_id": cid, "message": "hi"}))[0] == 202
    for delay in DELAYS:
        await until_pending(daemon, clock, [float(delay)])
        clock.advance(delay)
    await daemon.until_dead_letters(1)
    # Handover, an agent's message, the agent closes.
    assert (await calls.bot({"eventid": "1002", "conversation_id": cid}))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    ccsp_id = handover["Conversationid"]
    agent = {"Event": "Agent message", "Conversationid": ccsp_id, "Message": "agent here"}
    assert (await calls.agent(agent))[0] == 202
    await peers.channel.wait_for(1)
    assert (await calls.agent({"Event": "Close", "Conversationid": ccsp_id}))[0] == 202

    async def closed() -> bool:
        return any(b.get("Event") == "Agent Session Closed" for b in peers.bot.bodies)

    await daemon.until(closed)
    # Wrong tokens at every door.
    assert (await calls.customer("sneaky", "m9", token=SECRETS["bot access token"]))[0] == 401
    reply = {"eventid": "1001", "conversation_id": cid, "message": "x"}
    assert (await calls.bot(reply, token=SECRETS["CCSP webhook token"]))[0] == 401
    assert (await calls.agent(agent, token=SECRETS["bot webhook token"]))[0] == 401
    assert (await calls.admin("GET", "/v1/admin/integrations", token=ADMIN))[0] == 401
    # Bodies that are refused.
    events, asset = "/v1/channels/fb-page-1/events", SECRETS["asset token"]
    assert (await calls.raw(events, b'{"Event": ', asset))[0] == 400
    assert (await calls.raw(events, b'{"Event": "Incoming message"}', asset))[0] == 400
    assert (await calls.raw(events, b"x" * 5000, asset))[0] == 413
    hook = f"/v1/bots/support-bot/{SECRETS['bot webhook token']}"
    assert (
        await calls.raw(hook, b'{"eventid": "1001", "conversation_id": "nope", "message": "x"}')
    )[0] == 404
    assert (await calls.agent(agent))[0] == 409  # the session is closed
    errors = [(status, body) for status, body in calls.answers if status >= 400]
    assert len(errors) >= 10
    for status, body in errors:
        leaked = leaks(orjson.dumps(body).decode())
        assert leaked == [], f"a {status} answer carries the {leaked}: {body}"
    return str(cid)


def leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def event_text(event: dict[str, Any]) -> str:
    text = repr(event)
    exc = event.get("exc_info")
    if isinstance(exc, BaseException):
        text += "".join(traceback.format_exception(exc))
    return text


async def test_no_secret_reaches_a_log_line_or_an_error_body_and_every_conversation_line_says_which(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = await start_router(secret_config(peers, tmp_path / "router.db"), clock=clock)
    with capture_logs() as events:
        cid = await whole_scenario(daemon, peers, clock)
        await daemon.router.stop()
    for event in events:
        assert leaks(event_text(event)) == [], event
    about_one = [e for e in events if "conversation_id" in e]
    for event in about_one:
        assert {k: k in event for k in ABOUT} == dict.fromkeys(ABOUT, True), event
    seen = {e["event"] for e in events if e.get("conversation_id") == cid}
    assert {
        "delivery_attempt_failed",
        "agent_session_ended",
        "delivery_dead_lettered",
    } <= seen
    for event in (e for e in events if e.get("conversation_id") == cid):
        assert (event["integration"], event["asset"]) == ("support-bot", "fb-page-1"), event
    names = {e["event"] for e in events}
    assert {"integration_inactive", "integration_reactivated"} <= names


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put structlog and the root logger back as the rest of the suite expects them."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers, root.level = handlers, level


class Stream(io.TextIOWrapper):
    """Text on top of bytes, as stderr is, that says whether it is a terminal."""

    def __init__(self, terminal: bool) -> None:
        self.raw_bytes = io.BytesIO()
        super().__init__(self.raw_bytes, write_through=True)
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal

    def lines(self) -> list[str]:
        return self.raw_bytes.getvalue().decode().splitlines()


async def test_off_a_terminal_every_line_is_json_and_secret_free(
    start_router: StartRouter, peers: Peers, tmp_path: Path, restored_logging: None
) -> None:
    stream = Stream(terminal=False)
    logs.configure("auto", "debug", stream, cache=False)
    clock = ManualClock()
    daemon = await start_router(secret_config(peers, tmp_path / "router.db"), clock=clock)
    cid = await whole_scenario(daemon, peers, clock)
    logging.getLogger("aiohttp.server").warning("a line from a library")
    await daemon.router.stop()
    records = [orjson.loads(line) for line in stream.lines()]
    assert len(records) > 10
    for line in stream.lines():
        assert leaks(line) == [], line
    events = {r["event"] for r in records}
    assert {"router_started", "delivery_attempt_failed", "router_stopped"} <= events
    library = next(r for r in records if r["event"] == "a line from a library")
    assert (library["level"], library["logger"]) == ("warning", "aiohttp.server")
    failed = next(r for r in records if r["event"] == "delivery_attempt_failed")
    assert (failed["conversation_id"], failed["integration"], failed["asset"]) == (
        cid,
        "support-bot",
        "fb-page-1",
    )
    assert {"timestamp", "level"} <= set(failed)


def test_on_a_terminal_the_lines_are_for_people(restored_logging: None) -> None:
    stream = Stream(terminal=True)
    logs.configure("auto", "info", stream, cache=False)
    structlog.get_logger("test").info("something_happened", conversation_id="c1")
    [line] = stream.lines()
    assert "something_happened" in line and "conversation_id" in line
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)
    assert logs.json_lines("console", Stream(terminal=False)) is False
    assert logs.json_lines("json", Stream(terminal=True)) is True


def test_a_line_below_the_level_is_dropped_before_anything_formats_it(
    restored_logging: None,
) -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise AssertionError("formatted")

    stream = Stream(terminal=False)
    logs.configure("json", "info", stream, cache=False)
    structlog.get_logger("test").debug("per_message", value=Unprintable())
    assert stream.lines() == []


def test_serve_defaults_to_auto() -> None:
    args = build_parser().parse_args(["serve", "--config", "router.toml"])
    assert args.log_format == "auto"
    args = build_parser().parse_args(["serve", "--config", "x", "--log-format", "console"])
    assert args.log_format == "console"


async def test_the_path_every_message_takes_logs_nothing(daemon: Daemon, peers: Peers) -> None:
    with capture_logs() as events:
        for i in range(3):
            assert (await daemon.customer(f"hi {i}", f"m{i}"))[0] == 202
        [first, *_] = await peers.bot.wait_for(3)
        reply = {"eventid": "1001", "conversation_id": first["Conversationid"], "message": "ok"}
        assert (await daemon.bot(reply))[0] == 202
        await peers.channel.wait_for(1)
    assert events == []


async def test_the_daemons_stderr_is_json_lines_without_secrets(
    launcher: Launcher,  # noqa: F811
    peers: Peers,
) -> None:
    launcher.write_config(retry_delays_s=[60.0])
    peers.bot.script = [500]
    daemon = await launcher.start()
    assert await launcher.customer(daemon, "alice", "m-1") == 202
    async with launcher.session.post(
        daemon.public + "/v1/channels/fb-page-1/events",
        json={},
        headers={"Authorization": "Bearer wrong"},
    ) as resp:
        assert resp.status == 401
    async with asyncio.timeout(15):
        while "delivery_attempt_failed" not in daemon.output():
            assert daemon.proc.poll() is None, daemon.output()
            await asyncio.sleep(0.02)
    assert await daemon.terminate() == 0, daemon.output()
    text = daemon.log.read_text()
    records = [orjson.loads(line) for line in text.splitlines()]  # auto: stderr is a file
    events = [r["event"] for r in records]
    assert "router_started" in events
    assert events[-1] == "router_stopped"
    failed = next(r for r in records if r["event"] == "delivery_attempt_failed")
    assert (failed["integration"], failed["asset"]) == ("support-bot", "fb-page-1")
    assert failed["conversation_id"]
    for secret in ("asset-secret", "bot-secret", "bot-hook", "ccsp-secret", "ccsp-hook", ADMIN):
        assert secret not in text
