"""The keys of the connection and request limits: defaults, ranges and what goes together."""

from __future__ import annotations

from typing import Any

import pytest

from router.config.settings import (
    ConfigError,
    DeliveryConfig,
    LimitsConfig,
    ServerConfig,
    parse_config,
)


def with_(**tables: dict[str, Any]) -> dict[str, Any]:
    return {"admin": {"token": "t"}, **tables}


def refused(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "test.toml")
    return list(info.value.problems)


def test_the_defaults() -> None:
    config = parse_config(with_(), "test.toml")
    assert config.server == ServerConfig()
    assert (
        config.server.header_timeout_s,
        config.server.body_timeout_s,
        config.server.max_header_bytes,
        config.server.max_connections,
        config.server.max_connections_per_address,
        config.server.trusted_proxies,
        config.server.tls_cert,
        config.server.stop_grace_s,
    ) == (10.0, 30.0, 16384, 1024, 256, (), None, 10.0)
    assert (config.delivery.max_answer_bytes, config.delivery.max_attempts_per_destination) == (
        65536,
        64,
    )
    assert config.delivery == DeliveryConfig()
    assert config.limits == LimitsConfig()
    assert (config.limits.asset_rate_per_s, config.limits.asset_burst) == (0.0, 400)
    assert config.limits.address_rate_per_s == 0.0  # off unless asked for


def test_every_key_is_read() -> None:
    config = parse_config(
        with_(
            server={
                "header_timeout_s": 2,
                "body_timeout_s": 5.5,
                "max_header_bytes": 4096,
                "max_connections": 100,
                "max_connections_per_address": 10,
                "trusted_proxies": ["10.0.0.0/8", "::1", "192.0.2.7"],
                "tls_cert": "cert.pem",
                "tls_key": "key.pem",
                "stop_grace_s": 0,
            },
            delivery={"max_answer_bytes": 2048, "max_attempts_per_destination": 8},
            limits={"asset_rate_per_s": 0, "integration_burst": 3, "address_rate_per_s": 2.5},
        ),
        "test.toml",
    )
    assert config.server.trusted_proxies == ("10.0.0.0/8", "::1", "192.0.2.7")
    assert (config.server.max_connections, config.server.stop_grace_s) == (100, 0.0)
    assert config.delivery.max_attempts_per_destination == 8
    assert (config.limits.asset_rate_per_s, config.limits.integration_burst) == (0.0, 3)


@pytest.mark.parametrize(
    ("table", "key", "value", "reason"),
    [
        ("server", "header_timeout_s", 0, "must be greater than 0, got 0"),
        ("server", "header_timeout_s", 301, "must be at most 300, got 301"),
        ("server", "body_timeout_s", -1, "must be greater than 0, got -1"),
        ("server", "max_header_bytes", 100, "must be at least 1024, got 100"),
        ("server", "max_connections", 0, "must be at least 1, got 0"),
        ("server", "stop_grace_s", -1, "must be at least 0, got -1"),
        ("server", "trusted_proxies", ["10.0.0.300"], "must be an IP address or network"),
        ("server", "trusted_proxies", "10.0.0.0/8", "must be an array"),
        ("delivery", "max_answer_bytes", 10, "must be at least 1024, got 10"),
        ("delivery", "max_attempts_per_destination", 0, "must be at least 1, got 0"),
        ("limits", "asset_rate_per_s", -1, "must be at least 0, got -1"),
        ("limits", "ccsp_burst", 0, "must be at least 1, got 0"),
    ],
)
def test_out_of_range(table: str, key: str, value: Any, reason: str) -> None:
    [problem] = refused(with_(**{table: {key: value}}))
    assert problem.startswith(f"test.toml: {table}.{key}")
    assert reason in problem


def test_a_misspelt_limit_is_named_with_the_closest_key() -> None:
    assert refused(with_(limits={"asset_brust": 3})) == [
        "test.toml: limits.asset_brust: unknown key `asset_brust`; did you mean `asset_burst`?"
    ]


def test_a_certificate_needs_its_key() -> None:
    assert refused(with_(server={"tls_cert": "cert.pem"})) == [
        "test.toml: server.tls_key: is required with the other: HTTPS needs both"
    ]


def test_one_address_cannot_have_more_connections_than_all() -> None:
    assert refused(with_(server={"max_connections": 10, "max_connections_per_address": 20})) == [
        "test.toml: server.max_connections_per_address: must be at most max_connections (10), "
        "got 20"
    ]
