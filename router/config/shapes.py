"""What the rest of the daemon reads: the configuration as frozen values.

These dataclasses are the one place the defaults live; the schema that checks a file
(`router.config.schema`) takes its defaults from here, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

__all__ = [
    "AssetConfig",
    "CcspConfig",
    "Config",
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
]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    max_body_bytes: int = 1024 * 1024
    # A request's headers must be complete this long after its connection opened or its
    # previous answer was sent (an idle keep-alive connection is closed after it too); its
    # body this long after its headers.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 16 * 1024
    # Open connections, in all and from one peer address; at most half the open-file limit,
    # so that deliveries, the store and the debug port always have descriptors left.
    max_connections: int = 1024
    max_connections_per_address: int = 256
    # Addresses or networks whose X-Forwarded-For names the client, for per-address limits.
    trusted_proxies: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    # On SIGTERM: how long requests under way may take to finish before the daemon stops.
    stop_grace_s: float = 10.0


@dataclass(frozen=True)
class DebugConfig:
    host: str = "127.0.0.1"
    port: int = 9090
    # Bearer token for every debug path but /healthz and /metrics; required off loopback.
    token: str | None = None


@dataclass(frozen=True)
class StoreConfig:
    """The `[store]` table's retention (its path is `Config.store_path`); 0 keeps forever."""

    # Closed conversations untouched this long go, with their transcripts, sessions and the
    # Messageids they sent; handled inbound events this old too.
    retention_days: float = 0.0
    # Dead letters and poisoned events this old go.
    dead_letter_retention_days: float = 0.0


@dataclass(frozen=True)
class DeliveryConfig:
    timeout_s: float = 5.0
    retry_delays_s: tuple[float, ...] = (60.0, 300.0, 900.0, 2340.0)
    inactive_after_failures: int = 5
    handover_deadline_s: float = 60.0
    max_parked_age_s: float = 86_400.0
    max_answer_bytes: int = 64 * 1024  # a peer's answer past this fails the attempt
    max_attempts_per_destination: int = 64


@dataclass(frozen=True)
class LimitsConfig:
    """Intake rates, as token buckets: `*_rate_per_s` requests a second on average (`0`: no
    limit), `*_burst` at once. Assets, integrations and CCSPs are counted once their caller
    is authenticated; addresses (`address_*`) on every request of the public port."""

    # Off unless set: a router moves thousands of events a second, and a limit that is not the
    # operator's own would throttle a busy asset's legitimate traffic first.
    asset_rate_per_s: float = 0.0
    asset_burst: int = 400
    integration_rate_per_s: float = 0.0
    integration_burst: int = 400
    ccsp_rate_per_s: float = 0.0
    ccsp_burst: int = 400
    address_rate_per_s: float = 0.0
    address_burst: int = 100


@dataclass(frozen=True)
class ConversationsConfig:
    max_live: int = 10_000
    max_restarts: int = 3
    restart_window_s: float = 10.0
    restart_backoff_s: float = 0.1


@dataclass(frozen=True)
class IntegrationConfig:
    id: str
    name: str
    url: str
    access_token: str
    webhook_token: str | None = None
    signing_secret: str | None = None  # deliveries are signed with it (Standard Webhooks)
    signed_calls: bool = False  # its calls must be signed with it too


@dataclass(frozen=True)
class CcspConfig:
    id: str
    url: str
    access_token: str
    webhook_token: str | None = None
    session_idle_timeout_s: float = 86_400.0
    signing_secret: str | None = None
    signed_calls: bool = False


@dataclass(frozen=True)
class FlowConfig:
    id: str
    url: str
    signing_secret: str | None = None


@dataclass(frozen=True)
class AssetConfig:
    id: str
    channel: str
    service: str
    outbound_url: str
    token: str
    signing_secret: str | None = None


@dataclass(frozen=True)
class RuleConfig:
    on: str
    action: str
    bot: str | None = None
    ccsp: str | None = None
    flow: str | None = None
    channel: str | None = None
    asset: str | None = None


@dataclass(frozen=True)
class ServiceConfig:
    id: str
    rules: tuple[RuleConfig, ...] = ()


# The longest overlap a replaced secret may get, from the file or an admin call.
MAX_SECRET_OVERLAP_S = 90 * 86_400


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    admin_token: str = ""
    # How long a replaced secret stays good beside its successor; 0 ends it at once.
    secret_overlap_s: float = 86_400.0
    store_path: Path = Path("var/router.db")
    store: StoreConfig = field(default_factory=StoreConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    conversations: ConversationsConfig = field(default_factory=ConversationsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    integrations: tuple[IntegrationConfig, ...] = ()
    ccsps: tuple[CcspConfig, ...] = ()
    flows: tuple[FlowConfig, ...] = ()
    assets: tuple[AssetConfig, ...] = ()
    services: tuple[ServiceConfig, ...] = ()
    source: str = "<config>"

    def asset(self, asset_id: str) -> AssetConfig | None:
        return self._assets_by_id.get(asset_id)

    @cached_property
    def _assets_by_id(self) -> dict[str, AssetConfig]:
        """Every channel event looks its asset up: by key, not by a walk of the list."""
        return {a.id: a for a in reversed(self.assets)}  # the first of an id, as before

    def service(self, service_id: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.id == service_id), None)

    def ccsp(self, ccsp_id: str) -> CcspConfig | None:
        return next((c for c in self.ccsps if c.id == ccsp_id), None)

    def flow(self, flow_id: str) -> FlowConfig | None:
        return next((f for f in self.flows if f.id == flow_id), None)
