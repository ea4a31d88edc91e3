"""Agent sessions: opened by a handover, ended by the agent, the idle timeout or an
operator, and abandoned when the CCSP never answers the Handover.

Each end returns the conversation to the bot and tells the bot before anything the customer
says next, so no session can hold a customer (or lock the bot out) for good.
"""

from __future__ import annotations

from dataclasses import replace

from router.domain import payloads
from router.domain.events import BotHandover, DeliveryOutcome, HandoverDeadline, SessionIdle
from router.domain.lanes import Lane, Save
from router.domain.model import Destination
from router.domain.state import CcspSession
from router.domain.step import Context, Step, WakeAt


def open_session(step: Step, event: BotHandover, ctx: Context) -> None:
    conv = step.conversation
    if conv.mode == "bot_ccsp" and conv.route == "bot" and conv.status == "open":
        assert conv.ccsp is not None
        ccsp_id = ctx.new_id()
        body = payloads.handover(
            ccsp_conversation_id=ccsp_id,
            bot_conversation_id=conv.conversation_id,
            channel=conv.channel,
            user=conv.user,
            transcript=list(event.transcript or ()),
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


def handover_outcome(step: Step, event: DeliveryOutcome, ctx: Context) -> None:
    """The CCSP answered the Handover (the session stands), or it became a dead letter."""
    if event.ok:
        # Answered: the session stands, and nothing of it can be left unanswered any more.
        step.update(handover_delivery_id=None, handover_deadline_at=None, session_messages=())
        return
    for index, decision in enumerate(step.decisions):
        if (
            isinstance(decision, Save)
            and decision.delivery.delivery_id == event.delivery_id
            and decision.delivery.status == "dead"
        ):
            # Dead with its session: replaying it alone would open a session nobody holds.
            step.decisions[index] = Save(replace(decision.delivery, reason="session_abandoned"))
            abandon(step, decision.delivery.last_error or "the Handover was not delivered", ctx)
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


def abandon(step: Step, reason: str, ctx: Context) -> None:
    """The CCSP never took the session: it goes back to the bot, with what the agent owed."""
    conv = step.conversation
    assert conv.ccsp is not None and conv.ccsp_conversation_id is not None
    ccsp_id = conv.ccsp_conversation_id
    _withdraw_session(step, conv.ccsp, ccsp_id)
    step.sessions.append(
        CcspSession(ccsp_id, conv.ccsp, conv.conversation_id, "abandoned", ctx.now)
    )
    step.tell_bot(
        ctx,
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


def _withdraw_session(step: Step, ccsp: str, ccsp_id: str) -> None:
    step.withdraw(
        Destination("ccsp", ccsp),
        lambda d: d.body.get("Conversationid") == ccsp_id,
        "session_abandoned",
    )


def agent_spoke(step: Step) -> None:
    """A call from the CCSP under the session proves it has the Handover, whatever became of
    the answer to it."""
    if step.conversation.handover_delivery_id is not None:
        step.update(handover_delivery_id=None, handover_deadline_at=None, session_messages=())


def end_session(step: Step, reason: str, ctx: Context) -> None:
    """An agent session ends: the CCSP is told unless its agent ended it, and the bot is
    told before anything the customer says next."""
    conv = step.conversation
    assert conv.ccsp is not None and conv.ccsp_conversation_id is not None
    ccsp_id = conv.ccsp_conversation_id
    if conv.handover_delivery_id is not None:
        # The CCSP never answered the Handover: what it is owed is withdrawn, as when the
        # session is abandoned, and a Handover still on the wire is closed if it lands.
        _withdraw_session(step, conv.ccsp, ccsp_id)
    elif reason != "agent":
        step.deliver(ctx, Destination("ccsp", conv.ccsp), payloads.ccsp_close(ccsp_id))
    step.sessions.append(CcspSession(ccsp_id, conv.ccsp, conv.conversation_id, "closed", ctx.now))
    step.tell_bot(
        ctx,
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


def idle_check(step: Step, event: SessionIdle, ctx: Context) -> None:
    conv = step.conversation
    if conv.ccsp_conversation_id != event.ccsp_conversation_id:
        return  # that session already ended
    due = (conv.session_used_at or ctx.now) + ctx.session_idle_timeout
    if ctx.now >= due:
        end_session(step, "timeout", ctx)
    else:
        step.wake.append(WakeAt(due, event))


def deadline_passed(step: Step, event: HandoverDeadline, ctx: Context) -> None:
    conv = step.conversation
    if (
        conv.ccsp_conversation_id == event.ccsp_conversation_id
        and conv.handover_deadline_at is not None
        and ctx.now >= conv.handover_deadline_at
    ):
        last_error = _handover_error(step)
        abandon(
            step,
            last_error or f"no 2xx answer to the Handover within {ctx.handover_deadline:g}s",
            ctx,
        )
    elif (
        conv.ccsp_conversation_id == event.ccsp_conversation_id
        and conv.handover_deadline_at is not None
    ):
        step.wake.append(WakeAt(conv.handover_deadline_at, event))  # fired early: again


def late_answer(step: Step, lane: Lane, event: DeliveryOutcome, ctx: Context) -> None:
    """A CCSP that accepts a Handover after its session was abandoned holds a session nobody
    else does: it is closed at once, so no agent waits on a customer who went back to the bot.

    `lane` is the lane as the outcome found it."""
    head = lane.head
    if (
        event.ok
        and head is not None
        and head.delivery_id == event.delivery_id
        and head.status == "dead"
        and head.body.get("Event") == "Handover"
        and lane.phase == "in_flight"
    ):
        ccsp_id = str(head.body.get("Conversationid"))
        step.deliver(ctx, lane.dest, payloads.ccsp_close(ccsp_id))
