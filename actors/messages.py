"""Messages between the router's actors that the pure core does not see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from router.domain.commands import Ref, RouteChannel
from router.domain.model import Delivery
from router.domain.state import Conversation


class Dispatch(msgspec.Struct, frozen=True):
    """A conversation offers its lane head to the destination's endpoint; its bot and asset
    ride along for the attempt's log lines."""

    delivery: Delivery
    conversation: Ref
    integration: str | None = None
    asset: str | None = None


@dataclass(frozen=True)
class Reconfigure:
    url: str
    access_token: str | None
    signing_secret: str | None = None


@dataclass(frozen=True)
class Restore:
    """Start-up: a conversation with deliveries still owed."""

    conversation: Conversation
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True)
class ConversationClosed:
    conversation_id: str
    key: str


@dataclass(frozen=True)
class Retired:
    """The core let an idle conversation actor go; told once its last write is durable, so
    that loading it again reads what it wrote."""

    conversation_id: str


@dataclass(frozen=True)
class Bounced:
    """A customer event that reached its conversation after it closed: route it anew."""

    message: RouteChannel


@dataclass(frozen=True)
class Flush:
    """Core to a conversation that closed: answer Flushed once all before this is handled."""


@dataclass(frozen=True)
class Flushed:
    conversation_id: str


@dataclass(frozen=True)
class Idle:
    """A conversation actor that could not retire when the core asked is idle now."""

    conversation_id: str


@dataclass(frozen=True)
class Crashed:
    """A conversation actor raised while handling `event`; it handles nothing more and waits
    for its supervisor, the core, to evict it and start it again from the store."""

    conversation_id: str
    event: Any
    error: str
    bot: str | None
    asset: str | None = None


@dataclass(frozen=True)
class Restart:
    """Start a crashed conversation again: its backoff is over, and what it wrote is durable."""

    conversation_id: str


@dataclass(frozen=True)
class Resume:
    """The first message of a restarted conversation with nothing else waiting: loading it
    re-arms the deliveries it owes."""


@dataclass(frozen=True)
class Supervised:
    """For an integration's supervisor: one of its conversations was restarted, or had an
    event set aside as poisoned."""

    conversation_id: str
    outcome: str  # "restarted" | "poisoned"


@dataclass(frozen=True)
class Inspect:
    """Asked by the debug port: the answer is a JSON-ready view of the actor's live state."""


@dataclass(frozen=True)
class Passivate:
    """An operator asks the core to let a conversation's actor leave memory; answered with
    `passivated` or `when_idle`."""

    conversation_id: str


@dataclass(frozen=True)
class EvictAll:
    """Before the daemon starts its actors again from the store (recovery after the store
    failed): every conversation actor stops at once, and what it held in memory, which may
    have run ahead of the disk, goes with it. Answered with how many were evicted."""


@dataclass(frozen=True)
class Forget:
    """Conversations about to be erased from the store, as (id, identity): their actors stop
    at once with whatever they held, events waiting for them are dropped, and until
    `Forgotten` a read of them from the store counts as not found, so that none is loaded
    again and written back. Answered with how many actors were evicted."""

    conversations: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Forgotten:
    """The erase of these conversations, as (id, identity), is on disk: reads of them find
    nothing now."""

    conversations: tuple[tuple[str, str], ...]
