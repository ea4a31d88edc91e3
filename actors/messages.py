"""Messages between the router's actors that the pure core does not see."""

from __future__ import annotations

from dataclasses import dataclass

from router.conversation import Conversation
from router.effects import Ref
from router.events import ConversationEvent, CustomerEvent
from router.model import Delivery
from router.rules import ChannelRoute


@dataclass(frozen=True)
class Dispatch:
    """A conversation offers its lane head to the destination's endpoint."""

    delivery: Delivery
    conversation: Ref


@dataclass(frozen=True)
class AttemptResult:
    delivery: Delivery
    conversation: Ref
    ok: bool
    error: str | None


@dataclass(frozen=True)
class Verified:
    """The operator's re-verification succeeded."""


@dataclass(frozen=True)
class Reconfigure:
    url: str
    access_token: str | None


@dataclass(frozen=True)
class RouteChannel:
    """A stored channel event for the conversation of (asset, user, service, bot)."""

    route: ChannelRoute
    asset: str
    channel: str
    user: str
    event: CustomerEvent
    snapshot: Conversation | None


@dataclass(frozen=True)
class ToConversation:
    """An event for a known conversation; `snapshot` revives it if its actor is not running."""

    conversation_id: str
    snapshot: Conversation | None
    event: ConversationEvent


@dataclass(frozen=True)
class Restore:
    """Start-up: a conversation with deliveries still owed."""

    conversation: Conversation
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True)
class ConversationClosed:
    conversation_id: str
    key: str
