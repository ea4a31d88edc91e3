"""Trust: the debug port's token, secrets masked in its views, and the store's file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from router.cli import main
from tests.conftest import Peers, StartRouter, base_config

DEBUG_TOKEN = "debug-secret"
GUARDED = [
    "/debug/integrations",
    "/debug/conversations",
    "/debug/dead-letters",
    "/debug/poisoned-events",
    "/debug/directory",
    "/debug/runtime",
    "/debug/conversations/nope",
]


async def fetch(daemon: Any, path: str, token: str | None = None) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with daemon.session.get(daemon.debug + path, headers=headers) as answer:
        text = await answer.text()
        body = await answer.json() if answer.content_type == "application/json" else None
        return answer.status, body, text


async def test_with_a_token_every_view_but_health_and_metrics_needs_it(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    config["debug"]["token"] = DEBUG_TOKEN
    daemon = await start_router(config)
    for path in GUARDED:
        for token in (None, "wrong", DEBUG_TOKEN + "x", ""):
            status, body, _ = await fetch(daemon, path, token)
            assert (status, body["error"]) == (401, "unauthorized"), (path, token)
            assert DEBUG_TOKEN not in body["message"]
    for path in GUARDED[:-1]:
        status, _, _ = await fetch(daemon, path, DEBUG_TOKEN)
        assert status == 200, path
    assert (await fetch(daemon, "/debug/conversations/nope", DEBUG_TOKEN))[0] == 404
    assert (await fetch(daemon, "/healthz"))[:2] == (200, {"status": "ok"})
    status, _, metrics = await fetch(daemon, "/metrics")
    assert status == 200 and "router_inbound_events_total" in metrics
    # The page loads without the token, so that it can ask for it; its calls need it.
    status, _, page = await fetch(daemon, "/debug/")
    assert status == 200 and "needs its token" in page


async def test_on_loopback_without_a_token_the_views_stay_open(
    start_router: StartRouter,
) -> None:
    daemon = await start_router()
    for path in GUARDED[:-1]:
        assert (await fetch(daemon, path))[0] == 200, path


async def test_views_never_show_a_webhook_token_or_a_url_secret(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    config = base_config(peers, tmp_path / "router.db")
    config["integrations"][0]["url"] = "http://bot:pass-secret@127.0.0.1:9/bot?key=key-secret&v"
    daemon = await start_router(config)
    status, integrations, text = await fetch(daemon, "/debug/integrations")
    assert status == 200
    [bot] = integrations
    assert bot["webhook_url"] == f"{daemon.public}/v1/bots/support-bot/****"
    assert bot["url"] == "http://bot:****@127.0.0.1:9/bot?key=****&****"
    for secret in ("bot-hook", "pass-secret", "key-secret", "bot-secret"):
        assert secret not in text
    # The admin API, behind its own token, still gives the operator the whole URL.
    _, shown = await daemon.admin("GET", "/v1/admin/integrations/support-bot")
    assert shown["webhook_url"].endswith("/v1/bots/support-bot/bot-hook")


def modes(path: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if p.exists()
    }


async def test_the_store_and_its_wal_are_the_daemon_users_alone(
    start_router: StartRouter, tmp_path: Path
) -> None:
    daemon = await start_router()
    await daemon.customer("hi", "m1")  # something in the WAL
    found = modes(tmp_path / "router.db")
    assert found == {"router.db": 0o600, "router.db-wal": 0o600, "router.db-shm": 0o600}


async def test_a_store_left_readable_by_others_is_narrowed_at_start(
    start_router: StartRouter, tmp_path: Path
) -> None:
    first = await start_router()
    await first.customer("hi", "m1")
    await first.router.stop()
    for name in ("router.db", "router.db-wal", "router.db-shm"):
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, 0o644)
    again = await start_router()
    await again.customer("again", "m2")
    assert set(modes(tmp_path / "router.db").values()) == {0o600}


CONFIG = """\
[debug]
host = "{host}"
port = 9191
{token}
[admin]
token = "t"

[store]
path = "var/router.db"
"""


@pytest.mark.parametrize(
    ("host", "token", "ok"),
    [
        ("127.0.0.1", "", True),
        ("127.8.9.10", "", True),
        ("::1", "", True),
        ("localhost", "", True),
        ("0.0.0.0", "", False),
        ("::", "", False),
        ("10.1.2.3", "", False),
        ("debug.example.com", "", False),
        ("0.0.0.0", 'token = "s3cret"', True),
    ],
)
def test_check_config_refuses_a_debug_port_off_loopback_without_a_token(
    host: str,
    token: str,
    ok: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("router.toml").write_text(CONFIG.format(host=host, token=token))
    code = main(["check-config", "--config", "router.toml"])
    _, err = capsys.readouterr()
    if ok:
        assert (code, err) == (0, "")
        return
    assert code == 2
    assert err.splitlines() == [
        "router.toml: debug.token: is required when debug.host is not a loopback address "
        f"(127.0.0.0/8, ::1, localhost), got host {host!r}"
    ]
