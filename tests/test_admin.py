"""The operator's API: integrations and CCSPs, never showing an access token."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Daemon, Peers, StartRouter, base_config

FIELDS = ["id", "name", "url", "state", "webhook_url", "consecutive_failures"]


async def test_ccsp_list_and_get_show_webhook_urls_and_no_token(daemon: Daemon) -> None:
    status, items = await daemon.admin("GET", "/v1/admin/ccsp")
    assert status == 200
    assert items == [
        {
            "id": "agents",
            "url": items[0]["url"],
            "webhook_url": f"{daemon.public}/v1/ccsp/agents/ccsp-hook",
        }
    ]
    status, item = await daemon.admin("GET", "/v1/admin/ccsp/agents")
    assert (status, item) == (200, items[0])
    assert "ccsp-secret" not in str(items)


async def test_create_get_list_patch_delete_integration(daemon: Daemon, peers: Peers) -> None:
    status, created = await daemon.admin(
        "POST",
        "/v1/admin/integrations",
        {"name": "Sales bot", "url": peers.bot.url, "access_token": "sales-secret"},
    )
    assert status == 201
    assert list(created) == FIELDS
    assert created["state"] == "active"
    assert created["consecutive_failures"] == 0
    assert created["webhook_url"].startswith(f"{daemon.public}/v1/bots/{created['id']}/")
    assert "sales-secret" not in str(created)
    item_id = created["id"]
    assert await daemon.admin("GET", f"/v1/admin/integrations/{item_id}") == (200, created)
    status, items = await daemon.admin("GET", "/v1/admin/integrations")
    assert status == 200
    assert [i["id"] for i in items] == ["support-bot", item_id]
    assert all(list(i) == FIELDS for i in items)
    assert "bot-secret" not in str(items)
    status, patched = await daemon.admin(
        "PATCH", f"/v1/admin/integrations/{item_id}", {"url": peers.flow.url, "access_token": "new"}
    )
    assert status == 200
    assert patched["url"] == peers.flow.url
    assert patched["webhook_url"] == created["webhook_url"]
    status, _ = await daemon.admin("DELETE", f"/v1/admin/integrations/{item_id}")
    assert status == 204
    status, body = await daemon.admin("GET", f"/v1/admin/integrations/{item_id}")
    assert (status, body["error"]) == (404, "unknown_integration")


async def test_a_chosen_id_must_be_unique(daemon: Daemon, peers: Peers) -> None:
    body = {"id": "support-bot", "name": "x", "url": peers.bot.url, "access_token": "t"}
    status, answer = await daemon.admin("POST", "/v1/admin/integrations", body)
    assert (status, answer["error"]) == (409, "duplicate_id")


async def test_configured_integrations_cannot_be_deleted_over_the_api(daemon: Daemon) -> None:
    status, body = await daemon.admin("DELETE", "/v1/admin/integrations/support-bot")
    assert (status, body["error"]) == (409, "defined_in_config")


async def test_admin_created_integration_survives_a_restart_and_routes_by_rule(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    first = await start_router()
    status, created = await first.admin(
        "POST",
        "/v1/admin/integrations",
        {"id": "sales-bot", "name": "Sales", "url": peers.bot.url, "access_token": "sales-tok"},
    )
    assert status == 201
    await first.router.stop()
    config = base_config(peers, tmp_path / "router.db")
    config["services"][1]["rules"][0]["bot"] = "sales-bot"
    second = await start_router(config)
    status, again = await second.admin("GET", "/v1/admin/integrations/sales-bot")
    assert status == 200
    assert again["webhook_url"].rsplit("/", 1)[1] == created["webhook_url"].rsplit("/", 1)[1]
    await second.customer("buy", "s1", asset="sms-1")
    [got] = await peers.bot.wait_for(1)
    assert peers.bot.received[0].headers["Authorization"] == "Bearer sales-tok"
    token = created["webhook_url"].rsplit("/", 1)[1]
    status, _ = await second.bot(
        {"eventid": "1001", "conversation_id": got["Conversationid"], "message": "deal"},
        "sales-bot",
        token,
    )
    assert status == 202
    [out] = await peers.channel.wait_for(1)
    assert out["Message"] == "deal"


async def test_generated_webhook_tokens_are_kept_across_restarts(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    del config["integrations"][0]["webhook_token"]
    del config["ccsp"][0]["webhook_token"]
    first = await start_router(config)
    _, bot_before = await first.admin("GET", "/v1/admin/integrations/support-bot")
    _, ccsp_before = await first.admin("GET", "/v1/admin/ccsp/agents")
    await first.router.stop()
    second = await start_router(config)
    _, bot_after = await second.admin("GET", "/v1/admin/integrations/support-bot")
    _, ccsp_after = await second.admin("GET", "/v1/admin/ccsp/agents")
    path = lambda url: url.split("/v1/", 1)[1]  # noqa: E731
    assert path(bot_after["webhook_url"]) == path(bot_before["webhook_url"])
    assert path(ccsp_after["webhook_url"]) == path(ccsp_before["webhook_url"])
    assert bot_after["webhook_url"].rsplit("/", 1)[1] != "bot-hook"


async def test_debug_port_lists_conversations_page_by_page(daemon: Daemon, peers: Peers) -> None:
    for user in ("a", "b", "c"):
        await daemon.customer("hi", f"{user}-1", user=user)
    await peers.bot.wait_for(3)
    seen: list[str] = []
    cursor = ""
    while True:
        status, page = await daemon.get_debug(f"/debug/conversations?limit=2&cursor={cursor}")
        assert status == 200
        seen += [c["conversation_id"] for c in page["conversations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 3
    status, metrics = await daemon.get_debug("/metrics")
    assert status == 200
    assert (
        'router_inbound_events_total{channel="FB",result="accepted",source="channel"} 3.0'
        in metrics
    )
