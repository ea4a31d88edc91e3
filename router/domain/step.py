"""One step of a conversation: the context it runs in and what it decides.

A step collects the new state, the lane decisions (store, send, retry) and the timers to
set; the actor carries them out, writes first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from router.domain import lanes as lane_ops
from router.domain.events import ConversationEvent
from router.domain.lanes import Lane, LaneDecision, Send
from router.domain.model import Delivery, Destination
from router.domain.state import CcspSession, Conversation
from router.domain.timestamps import platform_timestamp


class Context(NamedTuple):
    """A tuple, not a frozen dataclass: one is made for every step a conversation takes."""

    now: float
    delays: tuple[float, ...]
    next_delivery_id: Callable[[], int]
    new_id: Callable[[], str]
    handover_deadline: float = 60.0
    session_idle_timeout: float = 86_400.0
    max_parked_age: float = 86_400.0


@dataclass(frozen=True)
class WakeAt:
    """Hand this event back to the conversation at `at`, whether its actor runs then or not."""

    at: float
    event: ConversationEvent


@dataclass
class Step:
    conversation: Conversation
    lanes: dict[str, Lane]
    decisions: list[LaneDecision] = field(default_factory=list)
    changed: bool = False
    sessions: list[CcspSession] = field(default_factory=list)
    inbox_done: int | None = None
    rejected: str | None = None  # why an accepted event was not acted on
    wake: list[WakeAt] = field(default_factory=list)
    outbound: list[tuple[str, str]] = field(default_factory=list)  # (asset, Messageid)
    transcript: list[dict[str, Any]] = field(default_factory=list)  # entries to append

    def deliver(self, ctx: Context, dest: Destination, body: dict[str, Any]) -> Delivery:
        delivery = Delivery(
            delivery_id=ctx.next_delivery_id(),
            conversation_id=self.conversation.conversation_id,
            dest=dest,
            body=body,
            created_at=ctx.now,
        )
        lane = self.lanes.get(dest.key, Lane(dest))
        self.apply(lane_ops.enqueue(lane, delivery, ctx.now))
        return delivery

    def withdraw(self, dest: Destination, match: Callable[[Delivery], bool], reason: str) -> None:
        """Withdraw from one lane; a head this very step was about to send has not left yet,
        so it is withdrawn like any waiting delivery rather than awaited."""
        lane = self.lanes.get(dest.key)
        if lane is None:
            return
        head = lane.head
        unsent = [
            d
            for d in self.decisions
            if isinstance(d, Send)
            and head is not None
            and d.delivery.delivery_id == head.delivery_id
        ]
        if unsent and lane.phase == "in_flight":
            self.decisions = [d for d in self.decisions if d not in unsent]
            lane = replace(lane, phase="waiting")
        self.apply(lane_ops.withdraw(lane, match, reason))
        lane = self.lanes[dest.key]
        if unsent and lane.phase == "waiting" and lane.head == head and head is not None:
            self.lanes[dest.key] = replace(lane, phase="in_flight")
            self.decisions.append(Send(head))

    def tell_bot(self, ctx: Context, body: dict[str, Any]) -> None:
        """A notice for the conversation's bot, in its lane behind what it is already owed."""
        if self.conversation.bot is not None:
            self.deliver(ctx, Destination("bot", self.conversation.bot), body)

    def apply(self, result: lane_ops.Result) -> None:
        lane, decisions = result
        self.lanes[lane.dest.key] = lane
        self.decisions.extend(decisions)

    def update(self, **changes: Any) -> None:
        self.conversation = replace(self.conversation, **changes)
        self.changed = True

    def remember(self, who: str, fields: dict[str, Any], now: float) -> None:
        entry = {
            "From": who,
            "Message": fields.get("Message"),
            "MessageType": fields.get("MessageType"),
            "Timestamp": platform_timestamp(now),
        }
        self.transcript.append(entry)
