"""The shape of the configuration file, as pydantic models that report every error at once.

Types and ranges live here, declared once per key, instead of a hand-written check per
key that stops at the first failure. Models are strict (a port is an integer, not "8080"
or 8080.0), refuse unknown keys and non-finite numbers, and take their defaults from the
frozen dataclasses in `router.config.shapes`, which the rest of the daemon reads.
Checks across tables (ports, ids, references, the store) are in `router.config.checks`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from router.config.secrets import signing_secret_problem
from router.config.shapes import (
    MAX_SECRET_OVERLAP_S,
    CcspConfig,
    Config,
    ConversationsConfig,
    DebugConfig,
    DeliveryConfig,
    LimitsConfig,
    ServerConfig,
    StoreConfig,
)
from router.config.urls import url_problem

__all__ = ["ACTIONS", "BOT_EVENT_TRIGGERS", "CHANNEL_TRIGGERS", "RouterFile"]

CHANNEL_TRIGGERS = frozenset({"incoming_message"})
BOT_EVENT_TRIGGERS = frozenset(
    {"custom_event", "handover", "milestone_reached", "notify", "unhandled_message"}
)
ACTIONS = frozenset({"invoke_flow", "forward_to_bot", "forward_to_bot_ccsp"})
LIMIT = 2**31  # upper bound of counts and sizes: far beyond use, and a 32-bit integer


def problem(reason: str, key: str | None = None) -> PydanticCustomError:
    """A reason in plain words; `key` places a table-level check on the key it is about."""
    ctx: dict[str, Any] = {"reason": reason}
    if key is not None:
        ctx["config_key"] = key
    return PydanticCustomError("config", "{reason}", ctx)


def _text(value: str) -> str:
    if not value.strip():
        raise problem("must be a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise problem("must not contain control characters")
    return value


def _signing_secret(value: str) -> str:
    reason = signing_secret_problem(value)
    if reason is not None:
        raise problem(reason)
    return value


def _url(value: str) -> str:
    """Only a URL an attempt could reach: anything else would fail every delivery later."""
    reason = url_problem(value)
    if reason is not None:
        raise problem(f"{reason}, got {value!r}")
    return value


def _network(value: str) -> str:
    """A trusted proxy: one address, or a network in CIDR notation."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise problem(f"must be an IP address or network, got {value!r}") from None
    return value


def _one_of(known: frozenset[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in known:
            raise problem(f"unknown {what} {value!r} (one of {', '.join(sorted(known))})")
        return value

    return AfterValidator(check)


Text = Annotated[str, AfterValidator(_text)]
Url = Annotated[Text, AfterValidator(_url)]
SigningSecret = Annotated[Text, AfterValidator(lambda v: _signing_secret(v))]
PublicUrl = Annotated[Url, AfterValidator(lambda value: value.rstrip("/"))]  # joined with paths
Trigger = Annotated[Text, _one_of(CHANNEL_TRIGGERS | BOT_EVENT_TRIGGERS, "trigger")]
Action = Annotated[Text, _one_of(ACTIONS, "action")]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port, as tests and benches use
Count = Annotated[int, Field(ge=1, le=LIMIT)]
# Ten years: a longer duration is a mistake, and past it the timestamps it makes would not
# be dates any more.
DECADE = 10 * 365.25 * 86_400
Seconds = Annotated[float, Field(gt=0, le=DECADE)]
Delay = Annotated[float, Field(ge=0, le=DECADE)]
Network = Annotated[Text, AfterValidator(_network)]
Rate = Annotated[float, Field(ge=0, le=LIMIT)]  # 0: no limit


class Table(BaseModel):
    """A TOML table: strict types, no unknown keys, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ServerTable(Table):
    host: Text = ServerConfig.host
    port: Port = ServerConfig.port
    public_url: PublicUrl | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=LIMIT)] = ServerConfig.max_body_bytes
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = ServerConfig.header_timeout_s
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = ServerConfig.body_timeout_s
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = ServerConfig.max_header_bytes
    max_connections: Count = ServerConfig.max_connections
    max_connections_per_address: Count = ServerConfig.max_connections_per_address
    trusted_proxies: list[Network] = Field(default_factory=list)
    tls_cert: Text | None = None
    tls_key: Text | None = None
    stop_grace_s: Annotated[float, Field(ge=0, le=3600)] = ServerConfig.stop_grace_s

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise problem("is required with the other: HTTPS needs both", missing)
        if self.max_connections_per_address > self.max_connections:
            raise problem(
                f"must be at most max_connections ({self.max_connections}), "
                f"got {self.max_connections_per_address}",
                "max_connections_per_address",
            )
        return self


class DebugTable(Table):
    host: Text = DebugConfig.host
    port: Port = DebugConfig.port
    token: Text | None = None


class AdminTable(Table):
    token: Text
    secret_overlap_s: Annotated[float, Field(ge=0, le=MAX_SECRET_OVERLAP_S)] = (
        Config.secret_overlap_s
    )


Days = Annotated[float, Field(ge=0, le=36_500)]  # 0: kept forever


class StoreTable(Table):
    path: Text = str(Config.store_path)
    retention_days: Days = StoreConfig.retention_days
    dead_letter_retention_days: Days = StoreConfig.dead_letter_retention_days


class DeliveryTable(Table):
    timeout_s: Annotated[float, Field(gt=0, le=60)] = DeliveryConfig.timeout_s
    retry_delays_s: Annotated[list[Delay], Field(min_length=1)] = Field(
        default_factory=lambda: list(DeliveryConfig.retry_delays_s)
    )
    inactive_after_failures: Count = DeliveryConfig.inactive_after_failures
    handover_deadline_s: Seconds = DeliveryConfig.handover_deadline_s
    max_parked_age_s: Seconds = DeliveryConfig.max_parked_age_s
    max_answer_bytes: Annotated[int, Field(ge=1024, le=LIMIT)] = DeliveryConfig.max_answer_bytes
    max_attempts_per_destination: Count = DeliveryConfig.max_attempts_per_destination


class LimitsTable(Table):
    asset_rate_per_s: Rate = LimitsConfig.asset_rate_per_s
    asset_burst: Count = LimitsConfig.asset_burst
    integration_rate_per_s: Rate = LimitsConfig.integration_rate_per_s
    integration_burst: Count = LimitsConfig.integration_burst
    ccsp_rate_per_s: Rate = LimitsConfig.ccsp_rate_per_s
    ccsp_burst: Count = LimitsConfig.ccsp_burst
    address_rate_per_s: Rate = LimitsConfig.address_rate_per_s
    address_burst: Count = LimitsConfig.address_burst


class ConversationsTable(Table):
    max_live: Count = ConversationsConfig.max_live
    max_restarts: Annotated[int, Field(ge=0, le=100)] = ConversationsConfig.max_restarts
    restart_window_s: Seconds = ConversationsConfig.restart_window_s
    restart_backoff_s: Seconds = ConversationsConfig.restart_backoff_s


class CallerTable(Table):
    """A bot or a CCSP: it calls the router back, and may be made to sign those calls."""

    id: Text
    url: Url
    access_token: Text
    webhook_token: Text | None = None
    signing_secret: SigningSecret | None = None
    signed_calls: bool = False

    @model_validator(mode="after")
    def _signed_calls_need_a_secret(self) -> Self:
        if self.signed_calls and self.signing_secret is None:
            raise problem("needs signing_secret: calls are checked against it", "signed_calls")
        return self


class IntegrationTable(CallerTable):
    name: Text


class CcspTable(CallerTable):
    session_idle_timeout_s: Seconds = CcspConfig.session_idle_timeout_s


class FlowTable(Table):
    id: Text
    url: Url
    signing_secret: SigningSecret | None = None


class AssetTable(Table):
    id: Text
    channel: Text
    service: Text
    outbound_url: Url
    token: Text
    signing_secret: SigningSecret | None = None


class RuleTable(Table):
    on: Trigger
    action: Action
    bot: Text | None = None
    ccsp: Text | None = None
    flow: Text | None = None
    channel: Text | None = None
    asset: Text | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """What an action needs, and what a bot event rule cannot do."""
        if self.on in BOT_EVENT_TRIGGERS:
            if self.action != "invoke_flow":
                raise problem("a bot event rule can only invoke_flow", "action")
            if self.channel or self.asset:
                key = "channel" if self.channel else "asset"
                raise problem("applies to channel rules only", key)
        if self.action == "invoke_flow" and self.flow is None:
            raise problem("is required for invoke_flow", "flow")
        if self.action in ("forward_to_bot", "forward_to_bot_ccsp") and self.bot is None:
            raise problem(f"is required for {self.action}", "bot")
        if self.action == "forward_to_bot_ccsp" and self.ccsp is None:
            raise problem("is required for forward_to_bot_ccsp", "ccsp")
        return self


class ServiceTable(Table):
    id: Text
    rules: list[RuleTable] = Field(default_factory=list)


SECTIONS = ("server", "debug", "admin", "store", "delivery", "conversations", "limits")


class RouterFile(Table):
    """The whole file. A section left out is an empty table, so its defaults apply and a
    required key inside it (admin.token) is reported by its own name."""

    server: ServerTable
    debug: DebugTable
    admin: AdminTable
    store: StoreTable
    delivery: DeliveryTable
    conversations: ConversationsTable
    limits: LimitsTable
    integrations: list[IntegrationTable] = Field(default_factory=list)
    ccsp: list[CcspTable] = Field(default_factory=list)
    flows: list[FlowTable] = Field(default_factory=list)
    assets: list[AssetTable] = Field(default_factory=list)
    services: list[ServiceTable] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _absent_sections_are_empty(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {**{name: {} for name in SECTIONS}, **data}
        return data
