"""What happens to a conversation: the messages its actor takes, as frozen data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from router.domain.model import Delivery


class CustomerEvent(msgspec.Struct, frozen=True):
    inbox_id: int
    event: str
    message_id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class BotReply:
    inbox_id: int
    fields: dict[str, Any] = field(hash=False)
    message_id: str = ""
    custom: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class BotHandover:
    inbox_id: int
    custom: dict[str, Any] = field(hash=False)
    flows: tuple[str, ...] = ()
    # The conversation's last messages, read from the store by its actor before this event
    # reaches the state machine; None until then.
    transcript: tuple[dict[str, Any], ...] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class BotEvent:
    """Milestone Reached, Notify, Unhandled Message or Custom Event."""

    inbox_id: int
    event: str
    data: dict[str, Any] = field(hash=False)
    flows: tuple[str, ...] = ()


@dataclass(frozen=True)
class BotClose:
    inbox_id: int


@dataclass(frozen=True)
class AgentMessage:
    inbox_id: int
    ccsp_conversation_id: str
    fields: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class AgentClose:
    inbox_id: int
    ccsp_conversation_id: str


@dataclass(frozen=True)
class CloseSession:
    """An operator ends the agent session the conversation is in."""

    inbox_id: int


@dataclass(frozen=True)
class HandoverDeadline:
    """The time the CCSP had to answer this session's Handover has run out."""

    ccsp_conversation_id: str


@dataclass(frozen=True)
class SessionIdle:
    """Check whether this agent session has gone unused for the CCSP's idle timeout."""

    ccsp_conversation_id: str


class DeliveryOutcome(msgspec.Struct, frozen=True):
    """An endpoint's answer: delivered, failed after an attempt, or parked without one."""

    delivery_id: int
    dest_key: str
    ok: bool
    attempted: bool
    error: str | None
    inactive: bool
    retry_after: float | None = None  # seconds the destination asked to wait (a 429)


@dataclass(frozen=True)
class RetryDue:
    delivery_id: int
    dest_key: str
    at: float | None = None  # the retry it was set for: a timer left from an earlier one is void


@dataclass(frozen=True)
class Release:
    """The destination is back in service: send what was parked for it."""

    dest_key: str


@dataclass(frozen=True)
class Replay:
    """An operator sends a dead letter again, behind whatever its lane holds."""

    delivery: Delivery


InboundEvent = (
    CustomerEvent
    | BotReply
    | BotHandover
    | BotEvent
    | BotClose
    | AgentMessage
    | AgentClose
    | CloseSession
)
ConversationEvent = (
    InboundEvent | DeliveryOutcome | RetryDue | Release | Replay | HandoverDeadline | SessionIdle
)
