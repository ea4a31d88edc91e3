"""One conversation's state machine: events in, new state and decisions out.

No I/O and no clock: the caller passes `now` and the id sources, and carries out what
comes back (store this, send that, retry at). That keeps every routing rule of the
Bot/CCSP integration testable without sockets or sleeps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from router.domain import lanes as lane_ops
from router.domain import payloads, sessions
from router.domain.events import (
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
from router.domain.lanes import Lane
from router.domain.model import Destination
from router.domain.state import Conversation
from router.domain.step import Context, Step

__all__ = ["handle"]


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
                sessions.open_session(step, event, ctx)
                for flow in event.flows:
                    _to_flow(step, flow, "Handover", event.custom, ctx)
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
                sessions.agent_spoke(step)
                _agent_message(step, event, ctx)
        case AgentClose():
            step.inbox_done = event.inbox_id
            if conversation.ccsp_conversation_id != event.ccsp_conversation_id:
                step.rejected = "the agent session is closed"
            else:
                sessions.agent_spoke(step)
                sessions.end_session(step, "agent", ctx)
        case CloseSession():
            step.inbox_done = event.inbox_id
            if conversation.ccsp_conversation_id is None:
                step.rejected = "no agent session is open"
            else:
                sessions.end_session(step, "operator", ctx)
        case SessionIdle():
            sessions.idle_check(step, event, ctx)
        case HandoverDeadline():
            sessions.deadline_passed(step, event, ctx)
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
                        retry_after=event.retry_after,
                    )
                )
                if event.delivery_id == conversation.handover_delivery_id:
                    sessions.handover_outcome(step, event, ctx)
                sessions.late_answer(step, lane, event, ctx)
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
        if event.event != "Message Delivery" and conv.handover_delivery_id is not None:
            sent = (*sent, event.message_id)  # listed if the Handover is never answered
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


def _reply_refused(step: Step, event: BotReply, ctx: Context) -> None:
    """A reply the bot was told was accepted, refused when processed: the bot hears why."""
    conv = step.conversation
    with_agent = conv.route == "ccsp"
    step.tell_bot(
        ctx,
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
