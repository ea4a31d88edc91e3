"""The actors' live state for the metrics scrape: read on the loop, between turns.

A scrape runs in a handler on the same loop as the actors, so reading an actor's fields
directly is a consistent snapshot that needs no message and never waits; the counts cost
the bot integrations and the actors with mail, not every resident conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from pykka import ActorDeadError

from actors.conversation import ConversationActor
from actors.core import CoreActor
from actors.endpoint import EndpointActor
from actors.journal import Journal
from actors.runtime import LoopActor, LoopActorRef, LoopInbox, Scheduler, actor_of
from router.domain.timestamps import iso_timestamp
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


# -- the debug port's live views ------------------------------------------------------------


def runtime_view(
    core: LoopActorRef[CoreActor] | None,
    endpoints: Mapping[str, LoopActorRef[EndpointActor]],
    rate: HandledRate,
) -> dict[str, Any]:
    """The actor runtime as a whole: who is resident, what mail waits, how fast it moves."""
    scheduler = Scheduler.current()
    census: dict[str, int] = {}
    restarts = 0
    if core is not None:
        with contextlib.suppress(ActorDeadError):
            directory = actor_of(core)
            census = directory.census()
            restarts += directory.supervised["restarted"]
    for ref in list(endpoints.values()):
        with contextlib.suppress(ActorDeadError):
            restarts += actor_of(ref).supervised["restarted"]
    waiting = [(KINDS.get(type(a), type(a).__name__), n) for a, n in scheduler.backlog()]
    by_kind = dict.fromkeys(KINDS.values(), 0)
    for kind, n in waiting:
        by_kind[kind] = by_kind.get(kind, 0) + n
    return {
        "conversations": {
            "resident": census.get("resident", 0),
            "loading": census.get("loading", 0),
            "retiring": census.get("retiring", 0),
            "restarting": census.get("restarting", 0),
        },
        "actors": {"directory": int(core is not None), "endpoints": len(endpoints)},
        "mailboxes": {
            "waiting": sum(n for _, n in waiting),
            "deepest": max((n for _, n in waiting), default=0),
            "actors_with_mail": len(waiting),
            "by_kind": by_kind,
        },
        "messages": {
            "handled": scheduler.handled,
            "per_second": rate.sample(time.monotonic(), scheduler.handled),
        },
        "restarts": restarts,
        "tasks": len(asyncio.all_tasks()),  # a leak of them shows in a soak as growth
    }


class HandledRate:
    """Messages handled per second, over the time since the previous look (at least 1 s)."""

    def __init__(self) -> None:
        self._at: float | None = None
        self._count = 0
        self._rate = 0.0

    def sample(self, now: float, count: int) -> float:
        if self._at is None:
            self._at, self._count = now, count
        elif now - self._at >= 1.0:
            self._rate = (count - self._count) / (now - self._at)
            self._at, self._count = now, count
        return self._rate


@dataclass
class Residents:
    """Resident conversations by bot: how many, and the first few ids."""

    count: int = 0
    sample: list[str] = field(default_factory=list)


def residents_by_bot(
    core: LoopActorRef[CoreActor] | None, sample: int = 20
) -> dict[str, Residents]:
    """One pass over the resident conversations for every bot at once."""
    found: dict[str, Residents] = {}
    if core is None:
        return found
    with contextlib.suppress(ActorDeadError):
        for cid, conversation_ref in list(actor_of(core).live.items()):
            with contextlib.suppress(ActorDeadError):
                bot = actor_of(conversation_ref).conversation.bot
                if bot is not None:
                    entry = found.setdefault(bot, Residents())
                    entry.count += 1
                    if len(entry.sample) < sample:
                        entry.sample.append(cid)
    return found


def endpoint_live(ref: LoopActorRef[EndpointActor], residents: Residents) -> dict[str, Any]:
    """An integration supervisor: its state, attempts out, parked conversations, and the
    resident conversations that deliver to it (counted over the resident ones only)."""
    try:
        endpoint = actor_of(ref)
    except ActorDeadError:
        return {}
    return {
        "state": endpoint.state.state,
        "consecutive_failures": endpoint.state.consecutive_failures,
        "in_flight": endpoint.in_flight,
        "last_error": endpoint.last_error,
        "parked_conversations": len(endpoint.parked),
        "restarts": endpoint.supervised["restarted"],
        "poisoned_events": endpoint.supervised["poisoned"],
        "resident_conversations": residents.count,
        "resident_sample": residents.sample,
    }


def conversation_live(
    core: LoopActorRef[CoreActor] | None, cid: str, journal: Journal
) -> dict[str, Any] | None:
    """One conversation actor in full while it is resident; None when it is not."""
    if core is None:
        return None
    try:
        directory = actor_of(core)
        actor = actor_of(directory.live[cid])
    except (KeyError, ActorDeadError):
        return None
    c = actor.conversation
    lanes = []
    timers: list[dict[str, Any]] = []
    for lane in actor.lanes.values():
        lanes.append(
            {
                "destination": lane.dest.key,
                "phase": lane.phase,
                "pending": [
                    {
                        "delivery_id": d.delivery_id,
                        "status": d.status,
                        "attempt": d.attempts,
                        "next_attempt_at": iso_timestamp(d.next_attempt_at),
                        "last_error": d.last_error,
                    }
                    for d in lane.queue
                ],
            }
        )
        head = lane.head
        if head is not None and head.status == "retrying" and head.next_attempt_at is not None:
            at = iso_timestamp(head.next_attempt_at)
            timers.append({"timer": "retry", "destination": lane.dest.key, "at": at})
    if c.handover_deadline_at is not None:
        timers.append({"timer": "handover_deadline", "at": iso_timestamp(c.handover_deadline_at)})
    idle = actor.deps.session_idle_timeouts.get(c.ccsp or "", 86_400.0)
    if c.route == "ccsp" and c.session_used_at is not None:
        timers.append({"timer": "session_idle", "at": iso_timestamp(c.session_used_at + idle)})
    return {
        "state": "suspended" if actor._suspended else "running",
        "mailbox": len(cast("LoopInbox", actor.actor_inbox)),
        "waiting_for_transcript": actor._handover is not None,
        "stashed": len(actor._stash),
        "lanes": lanes,
        "timers": timers,
        "recent_events": journal.of(cid),
    }
