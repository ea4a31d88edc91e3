"""Configuration: every refusal names the file, the key path and what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router.config.settings import Config, ConfigError, check_references, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "router.toml"
SRC = "test.toml"


def valid() -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 8080, "public_url": "http://example.test/"},
        "admin": {"token": "admin-secret"},
        "store": {"path": "var/test.db"},
        "delivery": {"timeout_s": 2, "retry_delays_s": [1, 2.5], "inactive_after_failures": 3},
        "integrations": [
            {
                "id": "support-bot",
                "name": "Support bot",
                "url": "http://127.0.0.1:9001/send",
                "access_token": "bot-secret",
            },
        ],
        "ccsp": [{"id": "agents", "url": "http://127.0.0.1:9002/ccsp", "access_token": "c"}],
        "flows": [{"id": "crm", "url": "https://127.0.0.1:9003/flow"}],
        "assets": [
            {
                "id": "fb-page-1",
                "channel": "FB",
                "service": "support",
                "outbound_url": "http://127.0.0.1:9004/out",
                "token": "asset-secret",
            },
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
                    {
                        "on": "milestone_reached",
                        "action": "invoke_flow",
                        "flow": "crm",
                        "bot": "support-bot",
                    },
                ],
            },
        ],
    }


def rule(**fields: Any) -> dict[str, Any]:
    raw = valid()
    raw["services"][0]["rules"] = [fields]
    return raw


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, SRC)
    return str(info.value)


def test_valid_config_parses() -> None:
    config = parse_config(valid(), SRC)
    assert config.source == SRC
    assert config.admin_token == "admin-secret"
    assert config.server.public_url == "http://example.test"
    assert config.store_path == Path("var/test.db")
    assert config.delivery.timeout_s == 2.0
    assert config.delivery.retry_delays_s == (1.0, 2.5)
    assert config.delivery.inactive_after_failures == 3
    assert [i.id for i in config.integrations] == ["support-bot"]
    assert config.ccsp("agents") is not None
    assert config.flow("crm") is not None
    asset = config.asset("fb-page-1")
    assert asset is not None and asset.service == "support"
    service = config.service("support")
    assert service is not None
    assert [r.action for r in service.rules] == ["forward_to_bot_ccsp", "invoke_flow"]


def test_minimal_config_takes_defaults() -> None:
    config = parse_config({"admin": {"token": "t"}}, SRC)
    defaults = Config()
    assert config.server == defaults.server
    assert config.debug == defaults.debug
    assert config.delivery == defaults.delivery
    assert config.store_path == defaults.store_path
    assert config.services == ()


def test_shipped_config_parses() -> None:
    config = load_config(SHIPPED)
    assert config.source == str(SHIPPED)
    assert config.admin_token
    assert [i.id for i in config.integrations] == ["support-bot"]
    assert len(config.delivery.retry_delays_s) == 4


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "must be greater than 0, got 0"),
        (-1, "must be greater than 0, got -1"),
        (120, "must be at most 60, got 120"),
        ("5", "must be a number"),
        (True, "must be a number"),
    ],
)
def test_timeout_must_be_a_number_of_seconds_up_to_a_minute(value: object, reason: str) -> None:
    raw = valid()
    raw["delivery"]["timeout_s"] = value
    assert refused(raw) == f"test.toml: delivery.timeout_s: {reason}"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_timeout_must_be_finite(tmp_path: Path, value: str) -> None:
    path = tmp_path / "router.toml"
    path.write_text(f'[admin]\ntoken = "t"\n\n[delivery]\ntimeout_s = {value}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: delivery.timeout_s: must be a finite number"


@pytest.mark.parametrize("value", ["[nan]", "[60, inf]"])
def test_retry_delays_must_be_finite(tmp_path: Path, value: str) -> None:
    path = tmp_path / "router.toml"
    path.write_text(f'[admin]\ntoken = "t"\n\n[delivery]\nretry_delays_s = {value}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: delivery.retry_delays_s[")
    assert str(info.value).endswith("]: must be a finite number")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([-1], "retry_delays_s[0]: must be at least 0, got -1"),
        ([60, -0.5], "retry_delays_s[1]: must be at least 0, got -0.5"),
        (["60"], "retry_delays_s[0]: must be a number"),
        ([True], "retry_delays_s[0]: must be a number"),
        (60, "retry_delays_s: must be an array"),
        ([], "retry_delays_s: must not be empty"),
    ],
)
def test_retry_delays_must_be_a_non_empty_list_of_non_negative_numbers(
    value: object, problem: str
) -> None:
    raw = valid()
    raw["delivery"]["retry_delays_s"] = value
    assert refused(raw) == f"test.toml: delivery.{problem}"


def test_inactive_after_failures_minimum() -> None:
    raw = valid()
    raw["delivery"]["inactive_after_failures"] = 0
    assert refused(raw) == "test.toml: delivery.inactive_after_failures: must be at least 1, got 0"


@pytest.mark.parametrize(
    ("value", "reason"),
    [(70000, "must be at most 65535, got 70000"), (-1, "must be at least 0, got -1")],
)
def test_port_out_of_range(value: int, reason: str) -> None:
    raw = valid()
    raw["server"]["port"] = value
    assert refused(raw) == f"test.toml: server.port: {reason}"


@pytest.mark.parametrize("value", ["8080", 8080.0, False])
def test_port_must_be_integer(value: object) -> None:
    raw = valid()
    raw["debug"] = {"port": value}
    assert refused(raw) == "test.toml: debug.port: must be an integer"


def test_public_url_must_be_http() -> None:
    raw = valid()
    raw["server"]["public_url"] = "ftp://example.test"
    message = refused(raw)
    assert message.startswith("test.toml: server.public_url: must be an http:// or https:// URL")
    assert "ftp://example.test" in message


def test_unknown_top_level_key() -> None:
    raw = valid()
    raw["extra"] = 1
    assert refused(raw) == "test.toml: extra: unknown key `extra`"


def test_unknown_nested_key() -> None:
    raw = valid()
    raw["server"]["prot"] = 8080
    assert refused(raw) == "test.toml: server.prot: unknown key `prot`; did you mean `port`?"


def test_unknown_key_in_array_table() -> None:
    raw = valid()
    raw["integrations"][0]["token"] = "x"
    assert refused(raw) == "test.toml: integrations[0].token: unknown key `token`"


def test_unknown_key_in_rule() -> None:
    raw = valid()
    raw["services"][0]["rules"][1]["flows"] = ["crm"]
    assert refused(raw) == (
        "test.toml: services[0].rules[1].flows: unknown key `flows`; did you mean `flow`?"
    )


def test_missing_admin_token() -> None:
    raw = valid()
    del raw["admin"]
    assert refused(raw) == "test.toml: admin.token: is required"


def test_blank_admin_token() -> None:
    raw = valid()
    raw["admin"]["token"] = "   "
    assert refused(raw) == "test.toml: admin.token: must be a non-empty string"


def test_section_must_be_a_table() -> None:
    raw = valid()
    raw["server"] = 5
    assert refused(raw) == "test.toml: server: must be a table"


def test_array_of_tables_required() -> None:
    raw = valid()
    raw["flows"] = {"id": "crm", "url": "http://x"}
    assert refused(raw) == "test.toml: flows: must be an array of tables ([[flows]])"


def test_array_item_must_be_a_table() -> None:
    raw = valid()
    raw["flows"] = ["crm"]
    assert refused(raw) == "test.toml: flows[0]: must be a table"


def test_missing_required_integration_field() -> None:
    raw = valid()
    del raw["integrations"][0]["access_token"]
    assert refused(raw) == "test.toml: integrations[0].access_token: is required"


def test_integration_url_required() -> None:
    raw = valid()
    del raw["integrations"][0]["url"]
    assert refused(raw) == "test.toml: integrations[0].url: is required"


def test_unknown_trigger() -> None:
    message = refused(rule(on="incoming_call", action="invoke_flow", flow="crm"))
    assert message.startswith("test.toml: services[0].rules[0].on: unknown trigger 'incoming_call'")
    assert "incoming_message" in message


def test_unknown_action() -> None:
    message = refused(rule(on="incoming_message", action="forward_to_human", bot="support-bot"))
    assert message.startswith(
        "test.toml: services[0].rules[0].action: unknown action 'forward_to_human'"
    )
    assert "invoke_flow" in message


def test_bot_event_rule_can_only_invoke_flow() -> None:
    assert refused(rule(on="notify", action="forward_to_bot", bot="support-bot")) == (
        "test.toml: services[0].rules[0].action: a bot event rule can only invoke_flow"
    )


def test_bot_event_rule_refuses_channel() -> None:
    assert refused(rule(on="notify", action="invoke_flow", flow="crm", channel="FB")) == (
        "test.toml: services[0].rules[0].channel: applies to channel rules only"
    )


def test_invoke_flow_requires_flow() -> None:
    assert refused(rule(on="incoming_message", action="invoke_flow")) == (
        "test.toml: services[0].rules[0].flow: is required for invoke_flow"
    )


def test_forward_to_bot_requires_bot() -> None:
    assert refused(rule(on="incoming_message", action="forward_to_bot")) == (
        "test.toml: services[0].rules[0].bot: is required for forward_to_bot"
    )


def test_forward_to_bot_ccsp_requires_ccsp() -> None:
    raw = rule(on="incoming_message", action="forward_to_bot_ccsp", bot="support-bot")
    assert refused(raw) == (
        "test.toml: services[0].rules[0].ccsp: is required for forward_to_bot_ccsp"
    )


def test_rule_with_unknown_bot() -> None:
    config = parse_config(rule(on="incoming_message", action="forward_to_bot", bot="ghost"), SRC)
    with pytest.raises(ConfigError) as info:
        check_references(config, {"support-bot"})
    assert str(info.value) == "test.toml: services[0].rules[0].bot: unknown integration 'ghost'"


def test_every_problem_is_reported_at_once() -> None:
    raw = valid()
    raw["server"]["port"] = "8080"
    raw["delivery"]["timeout_s"] = 0
    raw["flows"][0]["url"] = "ftp://crm"
    raw["assets"][0]["service"] = "sales"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, SRC)
    assert info.value.problems == (
        "test.toml: server.port: must be an integer",
        "test.toml: delivery.timeout_s: must be greater than 0, got 0",
        "test.toml: flows[0].url: must be an http:// or https:// URL, got 'ftp://crm'",
        "test.toml: assets[0].service: unknown service 'sales'",
    )
    assert str(info.value) == "\n".join(info.value.problems)


def test_check_references_reports_every_unknown_bot() -> None:
    raw = rule(on="incoming_message", action="forward_to_bot", bot="ghost")
    raw["services"][0]["rules"].append(
        {"on": "notify", "action": "invoke_flow", "flow": "crm", "bot": "support-bot2"}
    )
    config = parse_config(raw, SRC)
    with pytest.raises(ConfigError) as info:
        check_references(config, {"support-bot"})
    assert info.value.problems == (
        "test.toml: services[0].rules[0].bot: unknown integration 'ghost'",
        "test.toml: services[0].rules[1].bot: unknown integration 'support-bot2'; "
        "did you mean 'support-bot'?",
    )


def test_rule_with_bot_known_to_the_store_passes() -> None:
    raw = rule(on="incoming_message", action="forward_to_bot", bot="admin-bot")
    config = parse_config(raw, SRC)
    check_references(config, {"support-bot", "admin-bot"})


def test_bot_event_rule_with_unknown_bot() -> None:
    raw = rule(on="notify", action="invoke_flow", flow="crm", bot="ghost")
    config = parse_config(raw, SRC)
    with pytest.raises(ConfigError) as info:
        check_references(config, {"support-bot"})
    assert str(info.value) == "test.toml: services[0].rules[0].bot: unknown integration 'ghost'"


def test_rule_with_unknown_ccsp() -> None:
    raw = rule(on="incoming_message", action="forward_to_bot_ccsp", bot="support-bot", ccsp="x")
    assert refused(raw) == "test.toml: services[0].rules[0].ccsp: unknown ccsp 'x'"


def test_rule_with_unknown_flow() -> None:
    raw = rule(on="incoming_message", action="invoke_flow", flow="nowhere")
    assert refused(raw) == "test.toml: services[0].rules[0].flow: unknown flow 'nowhere'"


def test_rule_with_unknown_asset() -> None:
    raw = rule(on="incoming_message", action="invoke_flow", flow="crm", asset="sms-9")
    assert refused(raw) == "test.toml: services[0].rules[0].asset: unknown asset 'sms-9'"


def test_asset_with_unknown_service() -> None:
    raw = valid()
    raw["assets"][0]["service"] = "sales"
    assert refused(raw) == "test.toml: assets[0].service: unknown service 'sales'"


@pytest.mark.parametrize("key", ["integrations", "ccsp", "flows", "assets"])
def test_duplicate_ids(key: str) -> None:
    raw = valid()
    raw[key].append(dict(raw[key][0]))
    item_id = raw[key][0]["id"]
    assert refused(raw) == (
        f"test.toml: {key}[1].id: duplicate id {item_id!r}, first used by {key}[0]"
    )


def test_duplicate_service_ids() -> None:
    raw = valid()
    raw["services"].append({"id": "support"})
    assert refused(raw) == (
        "test.toml: services[1].id: duplicate id 'support', first used by services[0]"
    )


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text('[admin]\ntoken = "t"\n\n[delivery]\nretry_delays_s = [1, 2]\n')
    config = load_config(path)
    assert config.source == str(path)
    assert config.delivery.retry_delays_s == (1.0, 2.0)


def test_load_config_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text('[admin]\ntoken = "t"\n\n[delivery]\ntimeout_s = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: delivery.timeout_s: must be greater than 0, got 0"


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[admin\ntoken = 't'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: invalid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read: ")


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_cli_help_explains_serve() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "run the daemon" in result.stdout


def test_cli_serve_help_names_config_option() -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout


def test_cli_without_command_prints_help_and_fails() -> None:
    result = cli()
    assert result.returncode == 2
    assert "serve" in result.stdout


def test_cli_serve_refuses_bad_config(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[admin]\ntoken = "t"\n\n[delivery]\ntimeout_s = -5\n')
    result = cli("serve", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.toml" in result.stderr
    assert "delivery.timeout_s" in result.stderr
    assert "must be greater than 0, got -5" in result.stderr
    assert not (tmp_path / "var").exists()


def test_cli_serve_refuses_rule_with_unknown_bot(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        "[server]\nport = 0\n[debug]\nport = 0\n"
        '[admin]\ntoken = "t"\n[store]\npath = "router.db"\n'
        '[[flows]]\nid = "crm"\nurl = "http://127.0.0.1:9/flow"\n'
        '[[services]]\nid = "s"\n'
        '[[services.rules]]\non = "incoming_message"\naction = "forward_to_bot"\n'
        'bot = "ghost"\n'
    )
    result = cli("serve", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.toml: services[0].rules[0].bot: unknown integration 'ghost'" in result.stderr


def test_cli_serve_refuses_missing_config(tmp_path: Path) -> None:
    result = cli("serve", "--config", "missing.toml", cwd=tmp_path)
    assert result.returncode != 0
    assert "missing.toml: file not found" in result.stderr


def test_cli_check_config_accepts_shipped_config(tmp_path: Path) -> None:
    result = cli("check-config", "--config", str(SHIPPED), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{SHIPPED}: ok\n"


def test_cli_check_config_refuses_bad_config(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[admin]\ntoken = "t"\nextra = 1\n')
    result = cli("check-config", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode != 0
    assert "bad.toml: admin.extra: unknown key" in result.stderr


@pytest.mark.parametrize("url", ["http://", "http:///hook", "https:bot", "http://h:99999/x"])
def test_a_destination_url_must_name_a_host(url: str) -> None:
    raw = valid()
    raw["flows"] = [{"id": "crm", "url": url}]
    assert refused(raw).startswith("test.toml: flows[0].url: must ")


def test_new_timing_keys_have_defaults_and_are_checked() -> None:
    config = parse_config(valid(), "test.toml")
    assert (config.delivery.handover_deadline_s, config.delivery.max_parked_age_s) == (
        60.0,
        86_400.0,
    )
    raw = valid()
    raw["delivery"] = {"handover_deadline_s": 0}
    assert refused(raw) == (
        "test.toml: delivery.handover_deadline_s: must be greater than 0, got 0"
    )
