"""What actors ask the I/O edge to do: the only way anything leaves an actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from router.domain.commands import Ref
from router.domain.model import Delivery
from router.domain.state import Conversation
from router.io.records import Write


class Tell(msgspec.Struct, frozen=True):
    ref: Ref
    message: Any
    undeliverable: Tell | None = None  # told instead when `ref` has stopped


class TellAt(msgspec.Struct, frozen=True):
    """Deliver `message` to `ref` at wall-clock time `at` (epoch seconds)."""

    at: float
    ref: Ref
    message: Any


class Persist(msgspec.Struct, frozen=True):
    """Write these in one transaction, then, once durable, carry out `then` in order."""

    writes: tuple[Write, ...]
    then: tuple[Tell | TellAt, ...] = ()


class Attempt(msgspec.Struct, frozen=True):
    """One HTTP attempt of a delivery; the result goes back to `reply_to` as AttemptResult.
    `integration` (the conversation's bot) and `asset` are for its log lines."""

    delivery: Delivery
    url: str
    access_token: str | None
    reply_to: Ref
    conversation: Ref
    integration: str | None = None
    asset: str | None = None
    signing_secret: str | None = None  # the destination's: its deliveries carry a signature


@dataclass(frozen=True)
class Load:
    """Read a conversation (`id:<conversation id>`, or `key:<key>` for the open one); the
    answer goes back to `reply_to` as Loaded."""

    lookup: str
    reply_to: Ref


@dataclass(frozen=True)
class ReadTranscript:
    """Read a conversation's last messages, behind every write queued before this; the
    answer goes back to `reply_to` as TranscriptRead."""

    conversation_id: str
    reply_to: Ref


Effect = Persist | Attempt | Tell | TellAt | Load | ReadTranscript


class Edge(Protocol):
    def submit(self, effect: Effect) -> None:
        """Hand an effect to the I/O loop; safe from any thread, never blocks."""
        ...


# -- what the edge reports back --------------------------------------------------------


class AttemptResult(msgspec.Struct, frozen=True):
    delivery: Delivery
    conversation: Ref
    ok: bool
    error: str | None
    throttled: bool = False  # answered 429
    retry_after: float | None = None  # and asked for this many seconds


@dataclass(frozen=True)
class Loaded:
    """The store's answer to a `Load`: the conversation by id, or the open one for a key."""

    lookup: str
    conversation: Conversation | None
    deliveries: tuple[Delivery, ...] = ()
    failed: bool = False


@dataclass(frozen=True)
class TranscriptRead:
    """A conversation's last messages, oldest first, as the store had them."""

    entries: tuple[dict[str, Any], ...]
