"""The daemon's configuration: one TOML file, checked whole before anything starts.

Every problem names the file, the key path and what is wrong, and all of them are reported
at once, because the operator who reads them is usually looking at that file and nothing
else. The file is validated by the pydantic schema (`router.config.schema`) and the checks
across tables (`router.config.checks`); what the daemon reads are the frozen dataclasses
of `router.config.shapes`, built from the validated models.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from router.config.checks import (
    config_references,
    cross_table_problems,
    reference_problems,
    store_problems,
)
from router.config.problems import ConfigError, Problem, from_validation_error
from router.config.schema import RouterFile, RuleTable, ServiceTable
from router.config.shapes import (
    AssetConfig,
    CcspConfig,
    Config,
    ConversationsConfig,
    DebugConfig,
    DeliveryConfig,
    FlowConfig,
    IntegrationConfig,
    LimitsConfig,
    RuleConfig,
    ServerConfig,
    ServiceConfig,
    StoreConfig,
)

__all__ = [
    "AssetConfig",
    "CcspConfig",
    "Config",
    "ConfigError",
    "ConversationsConfig",
    "DebugConfig",
    "DeliveryConfig",
    "FlowConfig",
    "IntegrationConfig",
    "LimitsConfig",
    "RuleConfig",
    "ServerConfig",
    "ServiceConfig",
    "StoreConfig",
    "check_references",
    "load_config",
    "parse_config",
]


def load_config(path: str | Path) -> Config:
    """The file at `path`, checked whole, including whether its store could be opened here."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    return _checked(raw, source, store_problems(raw))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """The tables of a file already read; every problem at once, as one `ConfigError`.

    Rules naming bots are checked later (`check_references`), against the store as well.
    """
    return _checked(raw, source, [])


def check_references(config: Config, bots: set[str] | None) -> None:
    """Every id a rule or asset names must exist.

    Bots are checked only when `bots` is given: rules may name integrations created over the
    admin API, which only the store knows, so the daemon checks those once it has opened it.
    """
    known: dict[str, set[str]] = {
        "ccsp": {c.id for c in config.ccsps},
        "flow": {f.id for f in config.flows},
        "asset": {a.id for a in config.assets},
        "service": {s.id for s in config.services},
    }
    if bots is not None:
        known["integration"] = bots
    problems = reference_problems(config_references(config), known)
    if problems:
        raise ConfigError(*(p.line(config.source) for p in problems))


def _checked(raw: Mapping[str, Any], source: str, more: list[Problem]) -> Config:
    """Schema and cross-table checks both run, so one pass reports everything."""
    problems: list[Problem] = []
    try:
        model: RouterFile | None = RouterFile.model_validate(raw)
    except ValidationError as exc:
        model = None
        problems = from_validation_error(exc, RouterFile)
    problems = [*problems, *cross_table_problems(raw), *more]
    if problems or model is None:
        raise ConfigError(*(p.line(source) for p in problems))
    return _config(model, source)


def _config(model: RouterFile, source: str) -> Config:
    """The frozen values the daemon reads, from a file that passed every check."""
    return Config(
        server=ServerConfig(
            **{
                **model.server.model_dump(),
                "trusted_proxies": tuple(model.server.trusted_proxies),
            }
        ),
        debug=DebugConfig(**model.debug.model_dump()),
        admin_token=model.admin.token,
        secret_overlap_s=model.admin.secret_overlap_s,
        store_path=Path(model.store.path),
        store=StoreConfig(
            retention_days=model.store.retention_days,
            dead_letter_retention_days=model.store.dead_letter_retention_days,
        ),
        delivery=DeliveryConfig(
            timeout_s=model.delivery.timeout_s,
            retry_delays_s=tuple(model.delivery.retry_delays_s),
            inactive_after_failures=model.delivery.inactive_after_failures,
            handover_deadline_s=model.delivery.handover_deadline_s,
            max_parked_age_s=model.delivery.max_parked_age_s,
            max_answer_bytes=model.delivery.max_answer_bytes,
            max_attempts_per_destination=model.delivery.max_attempts_per_destination,
        ),
        conversations=ConversationsConfig(**model.conversations.model_dump()),
        limits=LimitsConfig(**model.limits.model_dump()),
        integrations=tuple(IntegrationConfig(**i.model_dump()) for i in model.integrations),
        ccsps=tuple(CcspConfig(**c.model_dump()) for c in model.ccsp),
        flows=tuple(FlowConfig(**f.model_dump()) for f in model.flows),
        assets=tuple(AssetConfig(**a.model_dump()) for a in model.assets),
        services=tuple(_service(s) for s in model.services),
        source=source,
    )


def _service(model: ServiceTable) -> ServiceConfig:
    return ServiceConfig(id=model.id, rules=tuple(_rule(r) for r in model.rules))


def _rule(model: RuleTable) -> RuleConfig:
    return RuleConfig(**model.model_dump())
