"""What the load is made of: the customers' share, and how the peers react."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


class MixError(ValueError):
    pass


@dataclass(frozen=True)
class Mix:
    """Customer sends are `message` : `postback` by weight. The rest are chances, per event
    that reaches a peer, that it reacts that way; the bot tries handover, then close, then
    reply; the agent tries close, then reply."""

    message: float = 0.95
    postback: float = 0.05
    reply: float = 0.5  # the bot answers a customer message
    handover: float = 0.03  # the bot hands the conversation to an agent
    bot_close: float = 0.01  # the bot closes the conversation
    report: float = 0.3  # the channel reports a message to the customer as delivered
    agent_reply: float = 0.7  # the agent answers a customer message
    agent_close: float = 0.2  # the agent closes the session

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


QUIET = Mix(
    message=1.0,
    postback=0.0,
    reply=0.0,
    handover=0.0,
    bot_close=0.0,
    report=0.0,
    agent_reply=0.0,
    agent_close=0.0,
)


def parse_mix(text: str, base: Mix = Mix()) -> Mix:
    """`reply=0.8,handover=0.1`: the named parts changed, the others as in `base`."""
    names = {f.name for f in fields(Mix)}
    changes: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            raise MixError(
                f"{part!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}"
            )
        try:
            number = float(value)
        except ValueError:
            raise MixError(f"{part!r}: {value!r} is not a number") from None
        if number < 0 or (name not in ("message", "postback") and number > 1):
            raise MixError(f"{part!r}: a weight is >= 0 and a chance is in [0, 1]")
        changes[name] = number
    mix = replace(base, **changes)
    if mix.message + mix.postback <= 0:
        raise MixError("message and postback weights cannot both be 0")
    if mix.handover + mix.bot_close + mix.reply > 1 or mix.agent_close + mix.agent_reply > 1:
        raise MixError(
            "the bot's (handover+bot_close+reply) and the agent's "
            "(agent_close+agent_reply) chances must each add up to at most 1"
        )
    return mix
