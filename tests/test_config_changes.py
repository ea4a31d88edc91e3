"""What a reload would change, decided from two configurations alone."""

from __future__ import annotations

import copy
from typing import Any

from router.config.changes import config_changes, restart_keys
from router.config.settings import parse_config

BASE: dict[str, Any] = {
    "admin": {"token": "admin-secret"},
    "integrations": [
        {"id": "b1", "name": "B", "url": "http://bot/1", "access_token": "bot-secret"},
        {"id": "b2", "name": "B", "url": "http://bot/2", "access_token": "t2"},
    ],
    "ccsp": [{"id": "c1", "url": "http://ccsp", "access_token": "ccsp-secret"}],
    "flows": [{"id": "f1", "url": "http://flow"}],
    "assets": [
        {
            "id": "a1",
            "channel": "FB",
            "service": "s1",
            "outbound_url": "http://out",
            "token": "asset-secret",
        }
    ],
    "services": [
        {"id": "s1", "rules": [{"on": "incoming_message", "action": "invoke_flow", "flow": "f1"}]}
    ],
}


def test_the_same_file_changes_nothing() -> None:
    running, new = parse_config(BASE), parse_config(copy.deepcopy(BASE))
    assert restart_keys(running, new) == []
    changes = config_changes(running, new)
    assert not changes
    assert changes.summary() == {}


def test_tables_by_id_and_keys_by_name_never_by_value() -> None:
    raw = copy.deepcopy(BASE)
    raw["integrations"][0]["access_token"] = "rotated-secret"
    raw["integrations"][0]["name"] = "Renamed"
    del raw["integrations"][1]
    raw["integrations"].append(
        {"id": "b3", "name": "C", "url": "http://bot/3", "access_token": "x"}
    )
    raw["ccsp"][0]["session_idle_timeout_s"] = 60.0
    raw["assets"][0]["channel"] = "WA"
    raw["services"][0]["rules"][0]["channel"] = "WA"
    raw["admin"]["token"] = "new-admin-secret"
    changes = config_changes(parse_config(BASE), parse_config(raw))
    assert changes.summary() == {
        "integrations": {
            "added": ["b3"],
            "changed": {"b1": ["name", "access_token"]},
            "removed": ["b2"],
        },
        "ccsp": {"changed": {"c1": ["session_idle_timeout_s"]}},
        "assets": {"changed": {"a1": ["channel"]}},
        "services": {"changed": {"s1": ["rules"]}},
        "admin": {"changed": ["token"]},
    }
    assert "secret" not in str(changes.summary())
    assert changes.table("flows").summary() == {}


def test_keys_read_once_at_start_need_a_restart() -> None:
    raw = copy.deepcopy(BASE)
    raw["server"] = {"port": 8081, "public_url": "https://router.example"}
    raw["debug"] = {"port": 9091}
    raw["store"] = {"path": "elsewhere.db"}
    raw["delivery"] = {"timeout_s": 2.0, "handover_deadline_s": 30.0}
    raw["conversations"] = {"restart_backoff_s": 1.0}
    assert restart_keys(parse_config(BASE), parse_config(raw)) == [
        "server.port",
        "server.public_url",
        "debug.port",
        "delivery.timeout_s",
        "delivery.handover_deadline_s",
        "conversations.restart_backoff_s",
        "store.path",
    ]
