"""What a reload would change, decided from two configurations alone."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from router.config.changes import RELOADABLE, config_changes, restart_keys
from router.config.settings import Config, parse_config

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
        "store.path",
        "delivery.timeout_s",
        "delivery.handover_deadline_s",
        "conversations.restart_backoff_s",
    ]


def different(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return (*value, value[0] if value else "other")
    if isinstance(value, Path):
        return value / "other"
    assert value is None, value
    return "other"


def test_every_key_outside_the_tables_and_the_admin_token_needs_a_restart() -> None:
    """A section added to the config later is read once at start until it is made
    reloadable: changing any of its keys must be refused, not silently half-applied."""
    running = parse_config(BASE)
    checked = 0
    for section in dataclasses.fields(Config):
        if section.name in RELOADABLE:
            continue
        value = getattr(running, section.name)
        if not dataclasses.is_dataclass(value):
            changed = dataclasses.replace(running, **{section.name: different(value)})
            assert len(restart_keys(running, changed)) == 1, section.name
            checked += 1
            continue
        for key in dataclasses.fields(value):
            edited = dataclasses.replace(value, **{key.name: different(getattr(value, key.name))})
            changed = dataclasses.replace(running, **{section.name: edited})
            assert restart_keys(running, changed) == [f"{section.name}.{key.name}"]
            assert not config_changes(running, changed)
            checked += 1
    assert checked >= 15  # the sections of today; a new key only adds to them
