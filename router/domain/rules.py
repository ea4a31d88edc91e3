"""Service rules: which action a channel event or a bot event triggers."""

from __future__ import annotations

from dataclasses import dataclass

from router.config.settings import AssetConfig, Config
from router.domain.state import Mode

_MODES: dict[str, Mode] = {
    "invoke_flow": "flow",
    "forward_to_bot": "bot",
    "forward_to_bot_ccsp": "bot_ccsp",
}


@dataclass(frozen=True)
class ChannelRoute:
    service: str
    mode: Mode
    bot: str | None
    ccsp: str | None
    flow: str | None

    @property
    def target(self) -> str:
        return self.bot if self.mode != "flow" and self.bot else f"flow:{self.flow}"


def route_channel_event(config: Config, asset: AssetConfig) -> ChannelRoute | None:
    """The first channel rule of the asset's service that matches the asset wins."""
    service = config.service(asset.service)
    if service is None:
        return None
    for rule in service.rules:
        if rule.on != "incoming_message":
            continue
        if rule.channel is not None and rule.channel.lower() != asset.channel.lower():
            continue
        if rule.asset is not None and rule.asset != asset.id:
            continue
        return ChannelRoute(
            service=service.id,
            mode=_MODES[rule.action],
            bot=rule.bot if rule.action != "invoke_flow" else None,
            ccsp=rule.ccsp if rule.action == "forward_to_bot_ccsp" else None,
            flow=rule.flow if rule.action == "invoke_flow" else None,
        )
    return None


def flows_for_bot_event(
    config: Config, service_id: str, bot: str | None, trigger: str
) -> tuple[str, ...]:
    """Every bot-event rule that matches invokes its flow."""
    service = config.service(service_id)
    if service is None:
        return ()
    return tuple(
        rule.flow
        for rule in service.rules
        if rule.on == trigger and rule.flow and (rule.bot is None or rule.bot == bot)
    )
