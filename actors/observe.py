"""The actors' live state for the metrics scrape: read on the loop, between turns.

A scrape runs in a handler on the same loop as the actors, so reading an actor's fields
directly is a consistent snapshot that needs no message and never waits; the counts cost
the bot integrations and the actors with mail, not every resident conversation.
"""

from __future__ import annotations

from collections.abc import Mapping

from pykka import ActorDeadError

from actors.conversation import ConversationActor
from actors.core import CoreActor
from actors.endpoint import EndpointActor
from actors.runtime import LoopActor, LoopActorRef, Scheduler, actor_of
from router.io.metrics import IntegrationHealth, LiveView

KINDS: dict[type[LoopActor], str] = {
    CoreActor: "core",
    EndpointActor: "endpoint",
    ConversationActor: "conversation",
}


def live_view(
    core: LoopActorRef[CoreActor] | None,
    endpoints: Mapping[str, LoopActorRef[EndpointActor]],
) -> LiveView | None:
    """None when not called on a running loop, or before the actors start."""
    if core is None:
        return None
    try:
        scheduler = Scheduler.current()
        census = actor_of(core).census()
    except (RuntimeError, ActorDeadError):
        return None
    integrations: dict[str, IntegrationHealth] = {}
    for ref in list(endpoints.values()):
        try:
            endpoint = actor_of(ref)
        except ActorDeadError:
            continue  # removed over the admin API meanwhile
        state = endpoint.state
        if state.dest.kind == "bot":
            integrations[state.dest.id] = IntegrationHealth(
                state.state, state.consecutive_failures, len(endpoint.parked)
            )
    mailboxes = dict.fromkeys(KINDS.values(), 0)
    for actor, depth in scheduler.backlog():
        kind = KINDS.get(type(actor), type(actor).__name__)
        mailboxes[kind] = mailboxes.get(kind, 0) + depth
    return LiveView(census, integrations, mailboxes)
