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
    CloseSession,
    ConversationEvent,
    CustomerEvent,
    DeliveryOutcome,
    HandoverDeadline,
    Release,
    Replay,
    RetryDue,
    SessionIdle,
)
from router.lanes import Lane, LaneDecision, Save, Send
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
    # The agent session in progress: its Handover until the CCSP answers it, when it was
    # last used by either side, and the customer messages it was sent.
    handover_delivery_id: int | None = None
    handover_deadline_at: float | None = None
    session_used_at: float | None = None
    session_messages: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        target = self.bot if self.mode != "flow" else f"flow:{self.flow}"
        return conversation_key(self.asset, self.user, self.service, target or "")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["transcript"] = list(self.transcript)
        data["session_messages"] = list(self.session_messages)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        return cls(
            **{
                **data,
                "transcript": tuple(data.get("transcript", ())),
                "session_messages": tuple(data.get("session_messages", ())),
            }
        )


SessionStatus = Literal["open", "closed", "abandoned"]


@dataclass(frozen=True)
class CcspSession:
    ccsp_conversation_id: str
    ccsp: str
    conversation_id: str
    status: SessionStatus
    at: float


@dataclass(frozen=True)
class Context:
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
                _to_customer(step, event.fields, ctx, event.message_id, event.custom)
            else:
                _reply_refused(step, event, ctx)
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
                _end_session(step, "agent", ctx)
        case CloseSession():
            step.inbox_done = event.inbox_id
            if conversation.ccsp_conversation_id is None:
                step.rejected = "no agent session is open"
            else:
                _end_session(step, "operator", ctx)
        case SessionIdle():
            _idle_check(step, event, ctx)
        case HandoverDeadline():
            if (
                conversation.ccsp_conversation_id == event.ccsp_conversation_id
                and conversation.handover_deadline_at is not None
                and ctx.now >= conversation.handover_deadline_at
            ):
                last_error = _handover_error(step)
                _abandon(
                    step,
                    last_error
                    or f"no 2xx answer to the Handover within {ctx.handover_deadline:g}s",
                    ctx,
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
                if event.delivery_id == conversation.handover_delivery_id:
                    _handover_outcome(step, event, ctx)
        case RetryDue():
            lane = step.lanes.get(event.dest_key)
            if lane is not None:
                step.apply(lane_ops.on_retry_due(lane, event.delivery_id, event.at))
        case Release():
            lane = step.lanes.get(event.dest_key)
            if lane is not None:
                step.apply(lane_ops.release(lane, now=ctx.now, max_age=ctx.max_parked_age))
        case Replay() if not _owed(step.lanes, event.delivery.delivery_id):
            revived = replace(
                event.delivery,
                status="pending",
                attempts=0,
                next_attempt_at=None,
                last_error=None,
                reason=None,
                parked_at=None,
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
    if event.event == "Incoming message":
        step.remember("customer", event.fields, ctx.now)
    conv = step.conversation
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
        sent = conv.session_messages
        if event.event != "Message Delivery":
            sent = (*sent, event.message_id)
        step.update(session_used_at=ctx.now, session_messages=sent)
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
        step.sessions.append(CcspSession(ccsp_id, conv.ccsp, conv.conversation_id, "open", ctx.now))
        sent = step.deliver(ctx, Destination("ccsp", conv.ccsp), body)
        deadline = ctx.now + ctx.handover_deadline
        step.update(
            route="ccsp",
            ccsp_conversation_id=ccsp_id,
            handover_delivery_id=sent.delivery_id,
            handover_deadline_at=deadline,
            session_used_at=ctx.now,
            session_messages=(),
        )
        step.wake.append(WakeAt(deadline, HandoverDeadline(ccsp_id)))
        step.wake.append(WakeAt(ctx.now + ctx.session_idle_timeout, SessionIdle(ccsp_id)))
    for flow in event.flows:
        _to_flow(step, flow, "Handover", event.custom, ctx)


def _handover_outcome(step: Step, event: DeliveryOutcome, ctx: Context) -> None:
    """The CCSP answered the Handover (the session stands), or it became a dead letter."""
    if event.ok:
        step.update(handover_delivery_id=None, handover_deadline_at=None)
        return
    for index, decision in enumerate(step.decisions):
        if (
            isinstance(decision, Save)
            and decision.delivery.delivery_id == event.delivery_id
            and decision.delivery.status == "dead"
        ):
            # Dead with its session: replaying it alone would open a session nobody holds.
            step.decisions[index] = Save(replace(decision.delivery, reason="session_abandoned"))
            _abandon(step, decision.delivery.last_error or "the Handover was not delivered", ctx)
            return


def _handover_error(step: Step) -> str | None:
    conv = step.conversation
    if conv.ccsp is None:
        return None
    lane = step.lanes.get(Destination("ccsp", conv.ccsp).key)
    for d in lane.queue if lane is not None else ():
        if d.delivery_id == conv.handover_delivery_id:
            return d.last_error
    return None


def _abandon(step: Step, reason: str, ctx: Context) -> None:
    """The CCSP never took the session: it goes back to the bot, with what the agent owed."""
    conv = step.conversation
    assert conv.ccsp is not None and conv.ccsp_conversation_id is not None
    ccsp_id = conv.ccsp_conversation_id
    step.withdraw(
        Destination("ccsp", conv.ccsp),
        lambda d: d.body.get("Conversationid") == ccsp_id,
        "session_abandoned",
    )
    step.sessions.append(
        CcspSession(ccsp_id, conv.ccsp, conv.conversation_id, "abandoned", ctx.now)
    )
    if conv.bot is not None:
        step.deliver(
            ctx,
            Destination("bot", conv.bot),
            payloads.handover_failed(
                conversation_id=conv.conversation_id,
                ccsp_conversation_id=ccsp_id,
                reason=reason,
                unanswered=list(conv.session_messages),
                channel=conv.channel,
                now=ctx.now,
            ),
        )
    _back_to_bot(step)


def _end_session(step: Step, reason: str, ctx: Context) -> None:
    """An agent session ends: the CCSP is told unless its agent ended it, and the bot is
    told before anything the customer says next."""
    conv = step.conversation
    assert conv.ccsp is not None and conv.ccsp_conversation_id is not None
    ccsp_id = conv.ccsp_conversation_id
    if reason != "agent":
        step.deliver(ctx, Destination("ccsp", conv.ccsp), payloads.ccsp_close(ccsp_id))
    step.sessions.append(CcspSession(ccsp_id, conv.ccsp, conv.conversation_id, "closed", ctx.now))
    if conv.bot is not None:
        step.deliver(
            ctx,
            Destination("bot", conv.bot),
            payloads.session_closed(
                conversation_id=conv.conversation_id,
                ccsp_conversation_id=ccsp_id,
                reason=reason,
                channel=conv.channel,
                now=ctx.now,
            ),
        )
    _back_to_bot(step)


def _back_to_bot(step: Step) -> None:
    step.update(
        route="bot",
        ccsp_conversation_id=None,
        handover_delivery_id=None,
        handover_deadline_at=None,
        session_used_at=None,
        session_messages=(),
    )


def _idle_check(step: Step, event: SessionIdle, ctx: Context) -> None:
    conv = step.conversation
    if conv.ccsp_conversation_id != event.ccsp_conversation_id:
        return  # that session already ended
    due = (conv.session_used_at or ctx.now) + ctx.session_idle_timeout
    if ctx.now >= due:
        _end_session(step, "timeout", ctx)
    else:
        step.wake.append(WakeAt(due, event))


def _reply_refused(step: Step, event: BotReply, ctx: Context) -> None:
    """A reply the bot was told was accepted, refused when processed: the bot hears why."""
    conv = step.conversation
    if conv.bot is None:
        return
    with_agent = conv.route == "ccsp"
    step.deliver(
        ctx,
        Destination("bot", conv.bot),
        payloads.reply_failed(
            conversation_id=conv.conversation_id,
            conversation_type="CCSP" if with_agent else "BOT",
            message_id=event.message_id,
            description="conversation_with_agent" if with_agent else "conversation_closed",
            channel=conv.channel,
            now=ctx.now,
        ),
    )


def _agent_message(step: Step, event: AgentMessage, ctx: Context) -> None:
    conv = step.conversation
    step.remember("agent", event.fields, ctx.now)
    step.update(session_used_at=ctx.now)
    _to_customer(step, event.fields, ctx, ctx.new_id())
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


def _to_customer(
    step: Step,
    fields: dict[str, Any],
    ctx: Context,
    message_id: str,
    custom: dict[str, Any] | None = None,
) -> None:
    conv = step.conversation
    step.outbound.append((conv.asset, message_id))
    step.deliver(
        ctx,
        Destination("channel", conv.asset),
        payloads.to_channel(
            fields,
            user=conv.user,
            channel=conv.channel,
            message_id=message_id,
            now=ctx.now,
            custom=custom,
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
