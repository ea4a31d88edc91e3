"""A destination's health: consecutive failures, and for bots, in or out of service."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from router.config.shapes import Config
from router.domain.model import Destination


@dataclass(frozen=True)
class EndpointState:
    dest: Destination
    url: str
    access_token: str | None = None
    state: Literal["active", "inactive"] = "active"
    consecutive_failures: int = 0
    signing_secret: str | None = None

    @property
    def inactive(self) -> bool:
        return self.state == "inactive"


def on_attempt(
    current: EndpointState, *, ok: bool, threshold: int, throttled: bool = False
) -> EndpointState:
    """Count across all conversations; any success resets; only a bot is taken out of service.
    A destination that answered 429 is busy, not failing: that changes nothing."""
    if ok:  # the common case, every delivery that lands: nothing to change, nothing made
        return (
            current
            if current.consecutive_failures == 0
            else replace(current, consecutive_failures=0)
        )
    if throttled:
        return current
    failures = current.consecutive_failures + 1
    state = current.state
    if current.dest.kind == "bot" and failures >= threshold:
        state = "inactive"
    return replace(current, consecutive_failures=failures, state=state)


def on_verified(current: EndpointState) -> EndpointState:
    return replace(current, state="active", consecutive_failures=0)


def destination_states(config: Config) -> list[EndpointState]:
    """The endpoints of a file's CCSPs, flows and channel assets, as they start. Bots have
    theirs from the store, which also knows those created over the admin API."""
    states = [
        EndpointState(
            Destination("ccsp", c.id), c.url, c.access_token, signing_secret=c.signing_secret
        )
        for c in config.ccsps
    ]
    states += [
        EndpointState(Destination("flow", f.id), f.url, signing_secret=f.signing_secret)
        for f in config.flows
    ]
    states += [
        EndpointState(
            Destination("channel", a.id), a.outbound_url, a.token, signing_secret=a.signing_secret
        )
        for a in config.assets
    ]
    return states
