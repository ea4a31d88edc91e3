"""What the front doors and the operator tell the directory and the endpoints: plain data,
so that the HTTP layer needs nothing of the actors but a reference to tell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from router.domain.events import ConversationEvent, CustomerEvent
from router.domain.rules import ChannelRoute


class Ref(Protocol):
    """The part of a pykka ActorRef a sender needs: a non-blocking tell."""

    def tell(self, message: Any) -> None: ...


class RouteChannel(msgspec.Struct, frozen=True):
    """A stored channel event for the conversation of (asset, user, service, bot)."""

    route: ChannelRoute
    asset: str
    channel: str
    user: str
    event: CustomerEvent
    opens: bool = True  # False for a delivery report: it never starts a conversation


@dataclass(frozen=True)
class ToConversation:
    """An event for a known conversation, running or not."""

    conversation_id: str
    event: ConversationEvent


@dataclass(frozen=True)
class Verified:
    """The operator's re-verification succeeded; parked conversations are released via `core`."""

    core: Ref
