"""Reloading the config file (`SIGHUP`) on a running router: what changes, what is refused.

The router runs in-process with its real store and real peers; the reload is the daemon's own
method, which the signal handler calls. Retry schedules run on a driven clock.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.clock import ManualClock
from tests.conftest import ADMIN, ASSET_TOKEN, Daemon, Peers, StartRouter, base_config
from tests.test_restart import toml_document

SECRETS = ("bot-secret", "bot-hook", "ccsp-secret", "ccsp-hook", "asset-secret", ADMIN)


class Reloader:
    """Writes a config file next to the store and reloads the running router from it."""

    def __init__(self, daemon: Daemon, raw: dict[str, Any], path: Path) -> None:
        self.daemon = daemon
        self.raw = raw
        self.path = path

    def edited(self) -> dict[str, Any]:
        """A copy of the running file's tables to change."""
        return copy.deepcopy(self.raw)

    async def reload(
        self, raw: dict[str, Any] | None = None, text: str | None = None
    ) -> tuple[bool, list[dict[str, Any]]]:
        self.path.write_text(text if text is not None else toml_document(raw or self.raw))
        with capture_logs() as events:
            applied = await self.daemon.router.reload(self.path)
        if applied and raw is not None:
            self.raw = raw
        return applied, events

    async def applied(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Reload `raw`, which must be applied; the `config_reloaded` line's changes."""
        applied, events = await self.reload(raw)
        assert applied, events
        [line] = [e for e in events if e["event"] == "config_reloaded"]
        assert line["log_level"] == "info"
        assert not any(secret in str(events) for secret in SECRETS)
        return dict(line["changes"])

    async def refused(
        self, raw: dict[str, Any] | None = None, text: str | None = None
    ) -> list[str]:
        """Reload, which must be refused; the reasons logged."""
        before = self.daemon.router.config
        applied, events = await self.reload(raw, text)
        assert not applied
        [line] = [e for e in events if e["event"] == "config_reload_refused"]
        assert line["log_level"] == "error"
        assert line["file"] == str(self.path)
        assert self.daemon.router.config is before
        assert self.daemon.router.intake is not None
        assert self.daemon.router.intake.config is before
        assert not any(e["event"] == "config_reloaded" for e in events)
        return list(line["reasons"])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def start(
    start_router: StartRouter,
    peers: Peers,
    tmp_path: Path,
    clock: ManualClock | None = None,
    **delivery: Any,
) -> Reloader:
    raw = base_config(peers, tmp_path / "router.db", **delivery)
    daemon = await start_router(copy.deepcopy(raw), clock=clock)
    return Reloader(daemon, raw, tmp_path / "router.toml")


def with_bot(raw: dict[str, Any], bot_id: str, url: str, token: str) -> dict[str, Any]:
    raw["integrations"].append(
        {
            "id": bot_id,
            "name": bot_id,
            "url": url,
            "access_token": token,
            "webhook_token": f"{bot_id}-hook",
        }
    )
    return raw


def without_support_bot(raw: dict[str, Any], peers: Peers) -> dict[str, Any]:
    """The file with `support-bot` replaced by `other-bot` everywhere a rule names it."""
    raw["integrations"] = []
    with_bot(raw, "other-bot", peers.flow.url, "other-secret")
    for service in raw["services"]:
        for rule in service["rules"]:
            if rule.get("bot") == "support-bot":
                rule["bot"] = "other-bot"
    return raw


async def owes_nothing(daemon: Daemon) -> None:
    """Until every delivery is settled on disk (the debug port reads the store)."""

    async def settled() -> bool:
        _, page = await daemon.get_debug("/debug/conversations")
        for item in page["conversations"]:
            if (await daemon.conversation(item["conversation_id"]))["deliveries"]:
                return False
        return True

    await daemon.until(settled)


async def integration(daemon: Daemon, name: str) -> dict[str, Any] | None:
    _, items = await daemon.get_debug("/debug/integrations")
    return next((i for i in items if i["id"] == name), None)


async def test_a_bot_added_to_the_file_starts_and_a_new_asset_and_service_route_to_it(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    assert (await daemon.customer("hi", "w0", asset="web-1"))[0] == 401
    raw = with_bot(reloader.edited(), "sales-bot", peers.bot.url, "sales-secret")
    raw["assets"].append(
        {
            "id": "web-1",
            "channel": "WEB",
            "service": "sales",
            "outbound_url": peers.channel.url,
            "token": ASSET_TOKEN,
        }
    )
    raw["services"].append(
        {
            "id": "sales",
            "rules": [{"on": "incoming_message", "action": "forward_to_bot", "bot": "sales-bot"}],
        }
    )
    assert await reloader.applied(raw) == {
        "integrations": {"added": ["sales-bot"]},
        "assets": {"added": ["web-1"]},
        "services": {"added": ["sales"]},
    }
    assert (await daemon.customer("hi", "w1", asset="web-1"))[0] == 202
    [body] = await peers.bot.wait_for(1)
    assert peers.bot.received[0].headers["Authorization"] == "Bearer sales-secret"
    assert body["Channel"] == "WEB"
    reply = {"eventid": "1001", "conversation_id": body["Conversationid"], "message": "hello"}
    assert (await daemon.bot(reply, "sales-bot", "sales-bot-hook"))[0] == 202
    [sent] = await peers.channel.wait_for(1)
    assert sent["Message"] == "hello"
    status, stored = await daemon.admin("GET", "/v1/admin/integrations/sales-bot")
    assert status == 200
    assert stored["webhook_url"] == f"{daemon.public}/v1/bots/sales-bot/sales-bot-hook"
    found = await integration(daemon, "sales-bot")
    assert found is not None
    assert found["state"] == "active"


async def test_a_changed_url_and_token_take_the_next_attempt_even_of_a_retrying_delivery(
    start_router: StartRouter, peers: Peers, tmp_path: Path, clock: ManualClock
) -> None:
    reloader = await start(start_router, peers, tmp_path, clock, retry_delays_s=[60])
    daemon = reloader.daemon
    peers.bot.script = [500]
    assert (await daemon.customer("hi", "m1", asset="sms-1"))[0] == 202

    async def retrying() -> bool:
        return clock.pending() == [60.0]

    await daemon.until(retrying)
    raw = reloader.edited()
    raw["integrations"][0]["url"] = peers.ccsp.url
    raw["integrations"][0]["access_token"] = "rotated-secret"
    changes = await reloader.applied(raw)
    assert changes == {"integrations": {"changed": {"support-bot": ["url", "access_token"]}}}
    assert "rotated-secret" not in str(changes)
    clock.advance(60)
    [retried] = await peers.ccsp.wait_for(1)
    assert retried["Message"] == "hi"
    assert peers.ccsp.received[0].headers["Authorization"] == "Bearer rotated-secret"
    assert (await daemon.customer("again", "m2", asset="sms-1"))[0] == 202
    _, after = await peers.ccsp.wait_for(2)
    assert after["Message"] == "again"
    assert peers.bot.received == []  # the old URL only ever saw the failed attempt
    status, stored = await daemon.admin("GET", "/v1/admin/integrations/support-bot")
    assert (status, stored["url"]) == (200, peers.ccsp.url)


async def test_changed_rules_route_the_next_conversation(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    assert (await daemon.customer("to the flow", "m1", user="u1", asset="wa-1"))[0] == 202
    await peers.flow.wait_for(1)
    raw = reloader.edited()
    [flows] = [s for s in raw["services"] if s["id"] == "flows"]
    flows["rules"] = [{"on": "incoming_message", "action": "forward_to_bot", "bot": "support-bot"}]
    assert await reloader.applied(raw) == {"services": {"changed": {"flows": ["rules"]}}}
    assert (await daemon.customer("to the bot", "m2", user="u2", asset="wa-1"))[0] == 202
    [body] = await peers.bot.wait_for(1)
    assert (body["Message"], body["Channel"]) == ("to the bot", "WA")
    assert len(peers.flow.received) == 1


async def test_a_file_with_errors_is_refused_and_the_running_config_keeps_routing(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    raw = reloader.edited()
    raw["integrations"][0]["url"] = "not a url"
    raw["flows"].append({"id": "crm", "url": peers.flow.url})
    reasons = await reloader.refused(raw)
    path = str(reloader.path)
    assert any(r.startswith(f"{path}: integrations[0].url: ") for r in reasons), reasons
    assert f"{path}: flows[1].id: duplicate id 'crm', first used by flows[0]" in reasons
    reasons = await reloader.refused(text="[server\nport = 1")
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{path}: invalid TOML")
    assert (await daemon.customer("still routed", "m1", asset="sms-1"))[0] == 202
    [body] = await peers.bot.wait_for(1)
    assert body["Message"] == "still routed"


async def test_a_rule_naming_a_bot_the_file_removes_is_refused(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    raw = reloader.edited()
    raw["integrations"] = []
    reasons = await reloader.refused(raw)
    assert f"{reloader.path}: services[1].rules[0].bot: unknown integration 'support-bot'" in (
        reasons
    )


async def test_keys_that_need_a_restart_are_named_and_nothing_is_applied(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    raw = reloader.edited()
    raw["server"]["max_body_bytes"] = 8192
    raw["debug"]["host"] = "127.0.0.2"
    raw["store"]["path"] = str(tmp_path / "other.db")
    raw["delivery"]["retry_delays_s"] = [1.0]
    raw["conversations"] = {"max_live": 5}
    raw["flows"].append({"id": "billing", "url": peers.flow.url})  # would apply on its own
    reasons = await reloader.refused(raw)
    assert reasons == [
        f"{reloader.path}: {key}: changed; needs a restart"
        for key in (
            "server.max_body_bytes",
            "debug.host",
            "store.path",
            "delivery.retry_delays_s",
            "conversations.max_live",
        )
    ]
    assert "flow:billing" not in reloader.daemon.router.endpoints


@pytest.mark.parametrize("owed", ["retrying", "parked"])
async def test_removing_a_bot_still_owed_a_delivery_is_refused_and_the_delivery_goes_on(
    start_router: StartRouter, peers: Peers, tmp_path: Path, clock: ManualClock, owed: str
) -> None:
    failures = 1 if owed == "parked" else 5
    reloader = await start(
        start_router,
        peers,
        tmp_path,
        clock,
        retry_delays_s=[60],
        inactive_after_failures=failures,
    )
    daemon = reloader.daemon
    peers.bot.script = [500]
    assert (await daemon.customer("hi", "m1", asset="sms-1"))[0] == 202

    async def is_owed() -> bool:
        found = await integration(daemon, "support-bot")
        assert found is not None
        return found["parked"] == 1 if owed == "parked" else clock.pending() == [60.0]

    await daemon.until(is_owed)
    raw = without_support_bot(reloader.edited(), peers)
    owed_reason = (
        f"{reloader.path}: integrations: cannot remove 'support-bot': 1 delivery is still owed "
        "to it"
    )
    assert await reloader.refused(raw) == [owed_reason]
    # Refused for another reason as well: both are named at once.
    also = copy.deepcopy(raw)
    also["server"]["max_body_bytes"] = 8192
    assert await reloader.refused(also) == [
        f"{reloader.path}: server.max_body_bytes: changed; needs a restart",
        owed_reason,
    ]
    assert "bot:support-bot" in daemon.router.endpoints
    if owed == "parked":
        status, _ = await daemon.admin("POST", "/v1/admin/integrations/support-bot/verify")
        assert status == 200
    else:
        clock.advance(60)
    [body] = await peers.bot.wait_for(1)
    assert body["Message"] == "hi"
    await owes_nothing(daemon)
    assert await reloader.applied(raw) == {
        "integrations": {"added": ["other-bot"], "removed": ["support-bot"]},
        "services": {
            "changed": {"support": ["rules"], "plain": ["rules"]},
        },
    }


async def test_removing_a_bot_owed_nothing_deletes_it_and_its_rules_go_elsewhere(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    assert (await daemon.customer("hi", "m1", asset="sms-1"))[0] == 202
    [first] = await peers.bot.wait_for(1)
    await owes_nothing(daemon)
    await reloader.applied(without_support_bot(reloader.edited(), peers))
    assert "bot:support-bot" not in daemon.router.endpoints
    assert await integration(daemon, "support-bot") is None
    status, body = await daemon.admin("GET", "/v1/admin/integrations/support-bot")
    assert (status, body["error"]) == (404, "unknown_integration")
    reply = {"eventid": "1001", "conversation_id": first["Conversationid"], "message": "late"}
    assert (await daemon.bot(reply))[0] == 401
    assert (await daemon.customer("hi again", "m2", user="u2", asset="sms-1"))[0] == 202
    [to_other] = await peers.flow.wait_for(1)
    assert to_other["Message"] == "hi again"
    assert peers.flow.received[0].headers["Authorization"] == "Bearer other-secret"


async def test_removing_a_flow_or_asset_still_owed_is_refused(
    start_router: StartRouter, peers: Peers, tmp_path: Path, clock: ManualClock
) -> None:
    reloader = await start(start_router, peers, tmp_path, clock, retry_delays_s=[60])
    daemon = reloader.daemon
    peers.flow.script = [500]
    peers.channel.script = [500]
    assert (await daemon.customer("to the flow", "m1", asset="wa-1"))[0] == 202
    assert (await daemon.customer("to the bot", "m2", asset="sms-1"))[0] == 202
    [body] = await peers.bot.wait_for(1)
    reply = {"eventid": "1001", "conversation_id": body["Conversationid"], "message": "hello"}
    assert (await daemon.bot(reply))[0] == 202

    async def both_retrying() -> bool:
        return clock.pending() == [60.0, 60.0]

    await daemon.until(both_retrying)
    raw = reloader.edited()
    raw["flows"] = []
    raw["assets"] = [a for a in raw["assets"] if a["id"] not in ("wa-1", "sms-1")]
    raw["services"] = [{"id": "support", "rules": raw["services"][0]["rules"][:1]}]
    reasons = await reloader.refused(raw)
    assert reasons == [
        f"{reloader.path}: flows: cannot remove 'crm': 1 delivery is still owed to it",
        f"{reloader.path}: assets: cannot remove 'sms-1': 1 delivery is still owed to it",
    ]
    clock.advance(60)
    await peers.flow.wait_for(1)
    await peers.channel.wait_for(1)
    await owes_nothing(daemon)
    changes = await reloader.applied(raw)
    assert changes["flows"] == {"removed": ["crm"]}
    assert changes["assets"] == {"removed": ["sms-1", "wa-1"]}
    assert {"flow:crm", "channel:sms-1", "channel:wa-1"}.isdisjoint(daemon.router.endpoints)
    assert (await daemon.customer("gone", "m3", asset="wa-1"))[0] == 401


async def test_removing_a_ccsp_with_an_open_agent_session_is_refused(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    await daemon.customer("I need a human", "m1")
    [first] = await peers.bot.wait_for(1)
    assert (await daemon.bot({"Event": "Handover", "conversation_id": first["Conversationid"]}))[
        0
    ] == 202
    [handover] = await peers.ccsp.wait_for(1)
    await owes_nothing(daemon)
    raw = reloader.edited()
    raw["ccsp"] = []
    raw["services"][0]["rules"] = [
        {"on": "incoming_message", "action": "forward_to_bot", "bot": "support-bot"}
    ]
    reasons = await reloader.refused(raw)
    assert reasons == [
        f"{reloader.path}: ccsp: cannot remove 'agents': 1 agent session is still open with it"
    ]
    close = {"Event": "Close", "Conversationid": handover["Conversationid"]}
    assert (await daemon.agent(close))[0] == 202
    await peers.bot.wait_for(2)  # the bot hears that the agent left
    await owes_nothing(daemon)
    assert (await reloader.applied(raw))["ccsp"] == {"removed": ["agents"]}
    status, items = await daemon.admin("GET", "/v1/admin/ccsp")
    assert (status, items) == (200, [])
    assert (await daemon.agent(close))[0] == 401
    # The conversation was made with that CCSP; a handover now has nowhere to go.
    handover = {"Event": "Handover", "conversation_id": first["Conversationid"]}
    status, answer = await daemon.bot(handover)
    assert (status, answer["error"]) == (409, "no_ccsp")


async def test_a_ccsp_added_and_the_admin_token_changed_apply_at_once(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    raw = reloader.edited()
    raw["ccsp"].append(
        {
            "id": "night-shift",
            "url": peers.ccsp.url,
            "access_token": "night-secret",
            "session_idle_timeout_s": 600.0,
        }
    )
    raw["admin"] |= {"token": "rotated-admin", "secret_overlap_s": 0}  # no overlap: at once
    assert await reloader.applied(raw) == {
        "ccsp": {"added": ["night-shift"]},
        "admin": {"changed": ["token"]},
    }
    status, _ = await daemon.admin("GET", "/v1/admin/ccsp")
    assert status == 401
    status, items = await daemon.admin("GET", "/v1/admin/ccsp", token="rotated-admin")
    assert status == 200
    assert [i["id"] for i in items] == ["agents", "night-shift"]
    assert items[1]["webhook_url"].startswith(f"{daemon.public}/v1/ccsp/night-shift/")
    assert daemon.router.session_idle_timeouts["night-shift"] == 600.0
    assert "ccsp:night-shift" in daemon.router.endpoints
    # The generated webhook token is kept in the store: the same file again keeps it.
    assert await reloader.applied(reloader.edited()) == {}
    _, again = await daemon.admin("GET", "/v1/admin/ccsp/night-shift", token="rotated-admin")
    assert again["webhook_url"] == items[1]["webhook_url"]


async def test_events_accepted_while_the_file_is_reloaded_are_all_delivered(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    raw = reloader.edited()
    raw["integrations"][0]["url"] = peers.ccsp.url
    sent = [f"m{i}" for i in range(20)]
    posts = [daemon.customer("hi", m, user=f"u{i}", asset="sms-1") for i, m in enumerate(sent)]
    # The reload in the middle of the posts, all of them under way on the loop at once.
    results = await asyncio.gather(*posts[:10], reloader.reload(raw), *posts[10:])
    applied, _ = results.pop(10)
    answers: list[Any] = results
    assert applied is True
    assert [status for status, _ in answers] == [202] * len(sent), answers

    async def all_delivered() -> bool:
        got = {b["Messageid"] for b in [*peers.bot.bodies, *peers.ccsp.bodies]}
        return got >= set(sent)

    await daemon.until(all_delivered)
    await owes_nothing(daemon)
    _, letters = await daemon.get_debug("/debug/dead-letters")
    assert letters["dead_letters"] == []


async def test_a_changed_webhook_token_keeps_the_old_one_good_for_the_overlap(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    reloader = await start(start_router, peers, tmp_path, clock=clock)
    daemon = reloader.daemon
    await daemon.customer("I need a human", "m1")
    [first] = await peers.bot.wait_for(1)
    bot_id = first["Conversationid"]
    assert (await daemon.bot({"Event": "Handover", "conversation_id": bot_id}))[0] == 202
    [handover] = await peers.ccsp.wait_for(1)
    raw = reloader.edited()
    raw["admin"]["secret_overlap_s"] = 600
    raw["integrations"][0]["webhook_token"] = "bot-hook-2"
    raw["ccsp"][0]["webhook_token"] = "ccsp-hook-2"
    assert await reloader.applied(raw) == {
        "integrations": {"changed": {"support-bot": ["webhook_token"]}},
        "ccsp": {"changed": {"agents": ["webhook_token"]}},
    }
    event = {"Event": "Custom Event", "conversation_id": bot_id}
    message = {"Event": "Agent message", "Conversationid": handover["Conversationid"]}
    for old_token_answer in (202, 401):  # within the overlap, then past it
        assert (await daemon.bot(event))[0] == old_token_answer
        assert (await daemon.bot(event, token="bot-hook-2"))[0] == 202
        assert (await daemon.agent({**message, "Message": "hi"}))[0] == old_token_answer
        assert (await daemon.agent({**message, "Message": "hi"}, token="ccsp-hook-2"))[0] == 202
        clock.advance(600)
    _, ccsp = await daemon.admin("GET", "/v1/admin/ccsp/agents")
    assert ccsp["webhook_url"] == f"{daemon.public}/v1/ccsp/agents/ccsp-hook-2"


async def test_a_rule_may_name_a_bot_created_over_the_admin_api(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    reloader = await start(start_router, peers, tmp_path)
    daemon = reloader.daemon
    body = {"id": "api-bot", "name": "API", "url": peers.ccsp.url, "access_token": "api-secret"}
    assert (await daemon.admin("POST", "/v1/admin/integrations", body))[0] == 201
    raw = reloader.edited()
    raw["services"][1]["rules"][0]["bot"] = "api-bot"
    assert await reloader.applied(raw) == {"services": {"changed": {"plain": ["rules"]}}}
    assert (await daemon.customer("hi", "m1", asset="sms-1"))[0] == 202
    [to_api] = await peers.ccsp.wait_for(1)
    assert to_api["Message"] == "hi"
    # Still managed over the API (not `defined_in_config`), and now in use by a rule.
    status, refused = await daemon.admin("DELETE", "/v1/admin/integrations/api-bot")
    assert (status, refused["error"]) == (409, "in_use")


async def test_a_route_found_for_an_asset_a_reload_replaced_is_not_kept(daemon: Daemon) -> None:
    """A request that looked its asset up before a reload routes by what it looked up; the
    route it finds is not kept for the asset's next events under the new file."""
    intake = daemon.router.intake
    assert intake is not None
    stale = daemon.router.config.asset("fb-page-1")
    assert stale is not None
    moved = replace(stale, service="no-such-service")
    others = tuple(a for a in daemon.router.config.assets if a.id != stale.id)
    intake.config = replace(daemon.router.config, assets=(moved, *others))  # as a reload does
    assert intake._route(stale) is not None  # its old service still has a rule
    assert intake._route(moved) is None
