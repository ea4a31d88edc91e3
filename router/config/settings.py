"""The daemon's configuration: one TOML file, checked whole before anything starts.

Every error names the file, the key path and what is wrong, because the operator who
reads it is usually looking at that file and nothing else.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.config.toml_table import ConfigError, Table

__all__ = ["Config", "ConfigError", "check_references", "load_config", "parse_config"]

CHANNEL_TRIGGERS = frozenset({"incoming_message"})
BOT_EVENT_TRIGGERS = frozenset(
    {"custom_event", "handover", "milestone_reached", "notify", "unhandled_message"}
)
ACTIONS = frozenset({"invoke_flow", "forward_to_bot", "forward_to_bot_ccsp"})


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class DebugConfig:
    host: str = "127.0.0.1"
    port: int = 9090


@dataclass(frozen=True)
class DeliveryConfig:
    timeout_s: float = 5.0
    retry_delays_s: tuple[float, ...] = (60.0, 300.0, 900.0, 2340.0)
    inactive_after_failures: int = 5
    handover_deadline_s: float = 60.0
    max_parked_age_s: float = 86_400.0


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


@dataclass(frozen=True)
class CcspConfig:
    id: str
    url: str
    access_token: str
    webhook_token: str | None = None
    session_idle_timeout_s: float = 86_400.0


@dataclass(frozen=True)
class FlowConfig:
    id: str
    url: str


@dataclass(frozen=True)
class AssetConfig:
    id: str
    channel: str
    service: str
    outbound_url: str
    token: str


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


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    admin_token: str = ""
    store_path: Path = Path("var/router.db")
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    conversations: ConversationsConfig = field(default_factory=ConversationsConfig)
    integrations: tuple[IntegrationConfig, ...] = ()
    ccsps: tuple[CcspConfig, ...] = ()
    flows: tuple[FlowConfig, ...] = ()
    assets: tuple[AssetConfig, ...] = ()
    services: tuple[ServiceConfig, ...] = ()
    source: str = "<config>"

    def asset(self, asset_id: str) -> AssetConfig | None:
        return next((a for a in self.assets if a.id == asset_id), None)

    def service(self, service_id: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.id == service_id), None)

    def ccsp(self, ccsp_id: str) -> CcspConfig | None:
        return next((c for c in self.ccsps if c.id == ccsp_id), None)

    def flow(self, flow_id: str) -> FlowConfig | None:
        return next((f for f in self.flows if f.id == flow_id), None)


def load_config(path: str | Path) -> Config:
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    return parse_config(raw, source)


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    top = Table(source, "", raw)
    server_t = top.table("server")
    server = ServerConfig(
        host=server_t.string("host", "127.0.0.1"),
        port=server_t.integer("port", 8080, maximum=65535),
        public_url=server_t.url("public_url") if "public_url" in server_t.data else None,
        max_body_bytes=server_t.integer("max_body_bytes", 1024 * 1024, minimum=1024),
    )
    server_t.done()
    debug_t = top.table("debug")
    debug = DebugConfig(
        host=debug_t.string("host", "127.0.0.1"),
        port=debug_t.integer("port", 9090, maximum=65535),
    )
    debug_t.done()
    admin_t = top.table("admin")
    admin_token = admin_t.string("token", required=True)
    admin_t.done()
    store_t = top.table("store")
    store_path = Path(store_t.string("path", "var/router.db"))
    store_t.done()
    delivery_t = top.table("delivery")
    delivery = DeliveryConfig(
        timeout_s=delivery_t.number("timeout_s", 5.0),
        retry_delays_s=delivery_t.numbers("retry_delays_s", (60.0, 300.0, 900.0, 2340.0)),
        inactive_after_failures=delivery_t.integer("inactive_after_failures", 5, minimum=1),
        handover_deadline_s=delivery_t.number("handover_deadline_s", 60.0),
        max_parked_age_s=delivery_t.number("max_parked_age_s", 86_400.0),
    )
    delivery_t.done()
    conversations_t = top.table("conversations")
    conversations = ConversationsConfig(
        max_live=conversations_t.integer("max_live", 10_000, minimum=1),
        max_restarts=conversations_t.integer("max_restarts", 3, minimum=0, maximum=100),
        restart_window_s=conversations_t.number("restart_window_s", 10.0),
        restart_backoff_s=conversations_t.number("restart_backoff_s", 0.1),
    )
    conversations_t.done()

    integrations = tuple(_integration(t) for t in top.tables("integrations"))
    ccsps = tuple(_ccsp(t) for t in top.tables("ccsp"))
    flows = tuple(_flow(t) for t in top.tables("flows"))
    assets = tuple(_asset(t) for t in top.tables("assets"))
    services = tuple(_service(t) for t in top.tables("services"))
    top.done()

    for key, items in (
        ("integrations", integrations),
        ("ccsp", ccsps),
        ("flows", flows),
        ("assets", assets),
        ("services", services),
    ):
        ids = [item.id for item in items]
        for i, item_id in enumerate(ids):
            if item_id in ids[:i]:
                raise ConfigError(f"{source}: {key}[{i}].id: duplicate id {item_id!r}")

    config = Config(
        server=server,
        debug=debug,
        admin_token=admin_token,
        store_path=store_path,
        delivery=delivery,
        conversations=conversations,
        integrations=integrations,
        ccsps=ccsps,
        flows=flows,
        assets=assets,
        services=services,
        source=source,
    )
    check_references(config, None)
    return config


def check_references(config: Config, bots: set[str] | None) -> None:
    """Every id a rule or asset names must exist.

    Bots are checked only when `bots` is given: rules may name integrations created over the
    admin API, which only the store knows, so the daemon checks those once it has opened it.
    """
    src = config.source
    service_ids = {s.id for s in config.services}
    for i, asset in enumerate(config.assets):
        if asset.service not in service_ids:
            raise ConfigError(f"{src}: assets[{i}].service: unknown service {asset.service!r}")
    for si, service in enumerate(config.services):
        for ri, rule in enumerate(service.rules):
            where = f"{src}: services[{si}].rules[{ri}]"
            if bots is not None and rule.bot is not None and rule.bot not in bots:
                raise ConfigError(f"{where}.bot: unknown integration {rule.bot!r}")
            if rule.ccsp is not None and config.ccsp(rule.ccsp) is None:
                raise ConfigError(f"{where}.ccsp: unknown ccsp {rule.ccsp!r}")
            if rule.flow is not None and config.flow(rule.flow) is None:
                raise ConfigError(f"{where}.flow: unknown flow {rule.flow!r}")
            if rule.asset is not None and config.asset(rule.asset) is None:
                raise ConfigError(f"{where}.asset: unknown asset {rule.asset!r}")


def _integration(t: Table) -> IntegrationConfig:
    item = IntegrationConfig(
        id=t.string("id", required=True),
        name=t.string("name", required=True),
        url=t.url("url"),
        access_token=t.string("access_token", required=True),
        webhook_token=t.optional_string("webhook_token"),
    )
    t.done()
    return item


def _ccsp(t: Table) -> CcspConfig:
    item = CcspConfig(
        id=t.string("id", required=True),
        url=t.url("url"),
        access_token=t.string("access_token", required=True),
        webhook_token=t.optional_string("webhook_token"),
        session_idle_timeout_s=t.number("session_idle_timeout_s", 86_400.0),
    )
    t.done()
    return item


def _flow(t: Table) -> FlowConfig:
    item = FlowConfig(id=t.string("id", required=True), url=t.url("url"))
    t.done()
    return item


def _asset(t: Table) -> AssetConfig:
    item = AssetConfig(
        id=t.string("id", required=True),
        channel=t.string("channel", required=True),
        service=t.string("service", required=True),
        outbound_url=t.url("outbound_url"),
        token=t.string("token", required=True),
    )
    t.done()
    return item


def _service(t: Table) -> ServiceConfig:
    service_id = t.string("id", required=True)
    rules = tuple(_rule(r) for r in t.tables("rules"))
    t.done()
    return ServiceConfig(id=service_id, rules=rules)


def _rule(t: Table) -> RuleConfig:
    on = t.string("on", required=True)
    if on not in CHANNEL_TRIGGERS | BOT_EVENT_TRIGGERS:
        known = ", ".join(sorted(CHANNEL_TRIGGERS | BOT_EVENT_TRIGGERS))
        raise t.error("on", f"unknown trigger {on!r} (one of {known})")
    action = t.string("action", required=True)
    if action not in ACTIONS:
        raise t.error("action", f"unknown action {action!r} (one of {', '.join(sorted(ACTIONS))})")
    rule = RuleConfig(
        on=on,
        action=action,
        bot=t.optional_string("bot"),
        ccsp=t.optional_string("ccsp"),
        flow=t.optional_string("flow"),
        channel=t.optional_string("channel"),
        asset=t.optional_string("asset"),
    )
    t.done()
    if on in BOT_EVENT_TRIGGERS:
        if action != "invoke_flow":
            raise t.error("action", "a bot event rule can only invoke_flow")
        if rule.channel or rule.asset:
            raise t.error("channel" if rule.channel else "asset", "applies to channel rules only")
    if action == "invoke_flow" and rule.flow is None:
        raise t.error("flow", "is required for invoke_flow")
    if action in ("forward_to_bot", "forward_to_bot_ccsp") and rule.bot is None:
        raise t.error("bot", f"is required for {action}")
    if action == "forward_to_bot_ccsp" and rule.ccsp is None:
        raise t.error("ccsp", "is required for forward_to_bot_ccsp")
    return rule
