"""One conversation's state machine: events in, new state and decisions out.

No I/O and no clock: the caller passes `now` and the id sources, and carries out what
comes back (store this, send that, retry at). That keeps every routing rule of the
Bot/CCSP integration testable without sockets or sleeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from router import lanes as lane_ops
from router import payloads
from router.clock import platform_timestamp
from router.events import (
    AgentClose,
    AgentMessage,
    BotClose,
    BotEvent,
    BotHandover,
    BotReply,
    ConversationEvent,
    CustomerEvent,
    DeliveryOutcome,
    Release,
    Replay,
    RetryDue,
)
from router.lanes import Lane, LaneDecision
from router.model import Delivery, Destination

Mode = Literal["flow", "bot", "bot_ccsp"]
TRANSCRIPT_LENGTH = 20


def conversation_key(asset: str, user: str, service: str, target: str) -> str:
    """The identity a conversation ID is stable for: asset, user, service and bot (or flow)."""
    return orjson.dumps([asset, user, service, target]).decode()


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    asset: str
    channel: str
    user: str
    service: str
    mode: Mode
    bot: str | None
    ccsp: str | None
    flow: str | None
    created_at: float
    status: Literal["open", "closed"] = "open"
    route: Literal["bot", "ccsp", "flow"] = "bot"
    ccsp_conversation_id: str | None = None
    transcript: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    closed_at: float | None = None

    @property
    def key(self) -> str:
        target = self.bot if self.mode != "flow" else f"flow:{self.flow}"
        return conversation_key(self.asset, self.user, self.service, target or "")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["transcript"] = list(self.transcript)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        return cls(**{**data, "transcript": tuple(data.get("transcript", ()))})


@dataclass(frozen=True)
class CcspSession:
    ccsp_conversation_id: str
    ccsp: str
    conversation_id: str
    status: Literal["open", "closed"]
    at: float


@dataclass(frozen=True)
class Context:
    now: float
    delays: tuple[float, ...]
    next_delivery_id: Callable[[], int]
    new_id: Callable[[], str]


@dataclass
class Step:
    conversation: Conversation
    lanes: dict[str, Lane]
    decisions: list[LaneDecision] = field(default_factory=list)
    changed: bool = False
    sessions: list[CcspSession] = field(default_factory=list)
    inbox_done: int | None = None
    rejected: str | None = None  # why an accepted event was not acted on

    def deliver(self, ctx: Context, dest: Destination, body: dict[str, Any]) -> None:
        delivery = Delivery(
            delivery_id=ctx.next_delivery_id(),
            conversation_id=self.conversation.conversation_id,
            dest=dest,
            body=body,
            created_at=ctx.now,
        )
        lane = self.lanes.get(dest.key, Lane(dest))
        self.apply(lane_ops.enqueue(lane, delivery))

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
        self.update(transcript=(*self.conversation.transcript, entry)[-TRANSCRIPT_LENGTH:])


def handle(
    conversation: Conversation, lanes: dict[str, Lane], event: ConversationEvent, ctx: Context
) -> Step:
    step = Step(conversation, dict(lanes))
    match event:
        case CustomerEvent():
            step.inbox_done = event.inbox_id
            _customer(step, event, ctx)
        case BotReply():
            step.inbox_done = event.inbox_id
            step.rejected = _bot_may_not_speak(conversation)
            if step.rejected is None:
                step.remember("bot", event.fields, ctx.now)
                _to_customer(step, event.fields, ctx)
        case BotHandover():
            step.inbox_done = event.inbox_id
            step.rejected = _bot_may_not_speak(conversation)
            if step.rejected is None:
                _handover(step, event, ctx)
        case BotEvent():
            step.inbox_done = event.inbox_id
            if conversation.status == "closed":
                step.rejected = "the conversation is closed"
            for flow in () if step.rejected else event.flows:
                _to_flow(step, flow, event.event, event.data, ctx)
        case BotClose():
            step.inbox_done = event.inbox_id
            if conversation.route == "ccsp":
                step.rejected = "an agent holds the conversation"
            elif conversation.status == "open":
                step.update(status="closed", closed_at=ctx.now)
        case AgentMessage():
            step.inbox_done = event.inbox_id
            if conversation.ccsp_conversation_id != event.ccsp_conversation_id:
                step.rejected = "the agent session is closed"
            else:
                _agent_message(step, event, ctx)
        case AgentClose():
            step.inbox_done = event.inbox_id
            if conversation.ccsp_conversation_id != event.ccsp_conversation_id:
                step.rejected = "the agent session is closed"
            else:
                step.update(route="bot", ccsp_conversation_id=None)
                assert conversation.ccsp is not None
                step.sessions.append(
                    CcspSession(
                        event.ccsp_conversation_id,
                        conversation.ccsp,
                        conversation.conversation_id,
                        "closed",
                        ctx.now,
                    )
                )
        case DeliveryOutcome():
            lane = step.lanes.get(event.dest_key)
            if lane is not None:
                step.apply(
                    lane_ops.on_outcome(
                        lane,
                        event.delivery_id,
                        ok=event.ok,
                        attempted=event.attempted,
                        error=event.error,
                        inactive=event.inactive,
                        now=ctx.now,
                        delays=ctx.delays,
                    )
                )
        case RetryDue():
            lane = step.lanes.get(event.dest_key)
            if lane is not None:
                step.apply(lane_ops.on_retry_due(lane, event.delivery_id, event.at))
        case Release():
            lane = step.lanes.get(event.dest_key)
            if lane is not None:
                step.apply(lane_ops.release(lane))
        case Replay() if not _owed(step.lanes, event.delivery.delivery_id):
            revived = replace(
                event.delivery, status="pending", attempts=0, next_attempt_at=None, last_error=None
            )
            lane = step.lanes.get(revived.dest.key, Lane(revived.dest))
            step.apply(lane_ops.enqueue(lane, revived))
    return step


def _bot_may_not_speak(conversation: Conversation) -> str | None:
    """The bot may reply, hand over or close only while it holds an open conversation."""
    if conversation.status == "closed":
        return "the conversation is closed"
    if conversation.route == "ccsp":
        return "an agent holds the conversation"
    return None


def _owed(lanes: dict[str, Lane], delivery_id: int) -> bool:
    return any(d.delivery_id == delivery_id for lane in lanes.values() for d in lane.queue)


def _customer(step: Step, event: CustomerEvent, ctx: Context) -> None:
    conv = step.conversation
    if event.event == "Incoming message":
        step.remember("customer", event.fields, ctx.now)
    if conv.mode == "flow":
        assert conv.flow is not None
        data = {"Messageid": event.message_id, **event.fields}
        _to_flow(step, conv.flow, event.event, data, ctx)
        return
    assert conv.bot is not None
    bot = Destination("bot", conv.bot)
    with_agent = conv.route == "ccsp" and conv.ccsp_conversation_id is not None
    step.deliver(
        ctx,
        bot,
        payloads.customer_to_bot(
            event.event,
            event.fields,
            event.message_id,
            conversation_id=conv.conversation_id,
            conversation_type="CCSP" if with_agent else "BOT",
            channel=conv.channel,
            now=ctx.now,
        ),
    )
    if with_agent:
        assert conv.ccsp is not None and conv.ccsp_conversation_id is not None
        step.deliver(
            ctx,
            Destination("ccsp", conv.ccsp),
            payloads.customer_to_bot(
                event.event,
                event.fields,
                event.message_id,
                conversation_id=conv.ccsp_conversation_id,
                conversation_type="CCSP",
                channel=conv.channel,
                now=ctx.now,
            ),
        )


def _handover(step: Step, event: BotHandover, ctx: Context) -> None:
    conv = step.conversation
    if conv.mode == "bot_ccsp" and conv.route == "bot" and conv.status == "open":
        assert conv.ccsp is not None
        ccsp_id = ctx.new_id()
        body = payloads.handover(
            ccsp_conversation_id=ccsp_id,
            bot_conversation_id=conv.conversation_id,
            channel=conv.channel,
            user=conv.user,
            transcript=list(conv.transcript),
            custom=event.custom,
            now=ctx.now,
        )
        step.update(route="ccsp", ccsp_conversation_id=ccsp_id)
        step.sessions.append(CcspSession(ccsp_id, conv.ccsp, conv.conversation_id, "open", ctx.now))
        step.deliver(ctx, Destination("ccsp", conv.ccsp), body)
    for flow in event.flows:
        _to_flow(step, flow, "Handover", event.custom, ctx)


def _agent_message(step: Step, event: AgentMessage, ctx: Context) -> None:
    conv = step.conversation
    step.remember("agent", event.fields, ctx.now)
    _to_customer(step, event.fields, ctx)
    if conv.bot is not None:
        step.deliver(
            ctx,
            Destination("bot", conv.bot),
            payloads.agent_copy_to_bot(
                event.fields,
                conversation_id=conv.conversation_id,
                channel=conv.channel,
                now=ctx.now,
            ),
        )


def _to_customer(step: Step, fields: dict[str, Any], ctx: Context) -> None:
    conv = step.conversation
    step.deliver(
        ctx,
        Destination("channel", conv.asset),
        payloads.to_channel(
            fields,
            user=conv.user,
            channel=conv.channel,
            message_id=ctx.new_id(),
            now=ctx.now,
        ),
    )


def _to_flow(step: Step, flow: str, event: str, data: dict[str, Any], ctx: Context) -> None:
    conv = step.conversation
    step.deliver(
        ctx,
        Destination("flow", flow),
        payloads.to_flow(
            event,
            conversation_id=conv.conversation_id,
            channel=conv.channel,
            user=conv.user,
            asset=conv.asset,
            data=data,
            now=ctx.now,
        ),
    )
