"""A conversation actor: owns one conversation's state, routing and delivery lanes.

It runs the pure state machine and hands everything else to the edge as effects:
writes first, and only once they are durable, the sends and timers that follow from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, get_args

import structlog

from actors.base import RouterActor, conversation_fields
from actors.counting import count_saved
from actors.journal import Journal
from actors.messages import (
    Bounced,
    ConversationClosed,
    Crashed,
    Dispatch,
    Flush,
    Flushed,
    Idle,
    Resume,
)
from router.domain.commands import Ref, RouteChannel, ToConversation
from router.domain.conversation import handle
from router.domain.events import (
    BotHandover,
    DeliveryOutcome,
    HandoverDeadline,
    InboundEvent,
    Release,
    Replay,
    RetryDue,
    SessionIdle,
)
from router.domain.lanes import Lane, LaneDecision, Remove, RetryAt, Save, Send
from router.domain.state import TRANSCRIPT_PRUNE_EVERY, Conversation
from router.domain.step import Context, Step
from router.io.clock import Clock
from router.io.effects import Edge, Persist, ReadTranscript, Tell, TellAt, TranscriptRead
from router.io.metrics import Metrics
from router.io.records import (
    AppendTranscript,
    InboxDone,
    RemoveDelivery,
    SaveConversation,
    SaveDelivery,
    SaveOutbound,
    SaveSession,
    Write,
)

_log = structlog.get_logger("router.conversation")


@dataclass(frozen=True)
class ConversationDeps:
    """What every conversation actor shares: the edge, the endpoints, time and ids."""

    edge: Edge
    core: Ref
    endpoints: Mapping[str, Ref]
    clock: Clock
    delays: tuple[float, ...]
    next_delivery_id: Callable[[], int]
    new_id: Callable[[], str]
    handover_deadline: float = 60.0
    session_idle_timeouts: Mapping[str, float] = field(default_factory=dict)  # by CCSP id
    max_parked_age: float = 86_400.0
    metrics: Metrics = field(default_factory=Metrics)
    journal: Journal = field(default_factory=Journal)

    def context(self, conversation: Conversation) -> Context:
        idle = self.session_idle_timeouts.get(conversation.ccsp or "", 86_400.0)
        return Context(  # by position: one is made per step, and keywords cost twice as much
            self.clock.now(),
            self.delays,
            self.next_delivery_id,
            self.new_id,
            self.handover_deadline,
            idle,
            self.max_parked_age,
        )


ROUTED = (
    *get_args(InboundEvent),
    Replay,
    RouteChannel,
    RetryDue,
    Release,
    Flush,
    Resume,
    HandoverDeadline,
    SessionIdle,
)


class ConversationActor(RouterActor):
    def __init__(
        self,
        conversation: Conversation,
        lanes: dict[str, Lane],
        deps: ConversationDeps,
        *,
        initial: list[LaneDecision] | None = None,
        persist_new: bool = False,
    ) -> None:
        super().__init__()
        self.conversation = conversation
        self.lanes = lanes
        self.deps = deps
        self._initial: Sequence[LaneDecision] = initial or ()
        self.owes_idle = False  # could not retire when asked: tell the core once idle
        self._persist_new = persist_new
        self._appended = 0  # transcript messages this actor wrote: see TRANSCRIPT_PRUNE_EVERY

    def about(self) -> dict[str, Any]:
        """Every line about a conversation carries these, passed at the call: made only when
        something is logged, which is rare, so a resident conversation holds no bound logger."""
        c = self.conversation
        return conversation_fields(c.conversation_id, c.bot, c.asset)

    def on_start(self) -> None:
        if self._persist_new and not self._initial and self.actor_inbox:
            # A new conversation with its first event waiting: the row goes to disk with that
            # event's step, one write instead of two; `handle` makes sure it does.
            self._unsaved = self.conversation
        elif self._initial or self._persist_new:
            step = Step(self.conversation, self.lanes, list(self._initial), self._persist_new)
            self._initial = ()
            self._carry_out(step, was_open=True, before=self.lanes)
        self._say_idle()

    # A new conversation whose row waits for its first step, as it was before that step. A
    # class default: an actor holds it only until then.
    _unsaved: Conversation | None = None

    def _save_new(self) -> None:
        """The new conversation's row, when its first message did not write it (a message that
        took no step, or a step that crashed: then as it was before the step)."""
        assert self._unsaved is not None
        step = Step(self._unsaved, self.lanes, [], True)
        self._carry_out(step, was_open=True, before=self.lanes)

    # A Handover waiting for the transcript, and what came after it. Class defaults: an
    # actor holds these only while it waits.
    _handover: BotHandover | None = None
    _stash: tuple[Any, ...] = ()

    def handle(self, message: Any) -> None:
        if self._handover is not None:
            if not isinstance(message, TranscriptRead):
                self._stash = (*self._stash, message)
                return
            handover = replace(self._handover, transcript=message.entries)
            stash = self._stash
            del self._handover, self._stash
            self._one(handover)
            for index, later in enumerate(stash):
                # Another Handover waits, or a step crashed: the rest wait, in order.
                if self._handover is not None or self._suspended:
                    self._stash = (*self._stash, *stash[index:])
                    break
                self._one(later)
        else:
            self._one(message)
        if self._unsaved is not None:
            self._save_new()
        self._say_idle()

    def _say_idle(self) -> None:
        if self.owes_idle and self.try_retire():
            self.owes_idle = False
            self.deps.core.tell(Idle(self.conversation.conversation_id))

    def unhandled(self) -> list[Any]:
        """What this actor took from its inbox but has not handled: a Handover waiting for
        its transcript and what came after it. Its supervisor takes them on a crash."""
        waiting = [] if self._handover is None else [self._handover]
        return [*waiting, *self._stash]

    def _one(self, message: Any) -> None:
        if isinstance(message, Flush):
            self.deps.core.tell(Flushed(self.conversation.conversation_id))
        elif isinstance(message, BotHandover) and message.transcript is None:
            # The transcript is on disk, behind this conversation's own queued writes.
            self._handover = message
            self._stash = ()
            cid = self.conversation.conversation_id
            self.deps.edge.submit(ReadTranscript(cid, self.actor_ref))
        elif not isinstance(message, Resume | TranscriptRead):
            try:
                self._step(message)
            except Exception as exc:
                self._crash(message, exc)

    def try_retire(self) -> bool:
        """Whether this actor may leave memory now: asked by the core on the loop, between
        this actor's turns, so the answer cannot go stale before the core acts on it.

        Not before its first turn (which writes a new conversation), nor while mail waits for
        it, nor while an attempt is out (its outcome comes to this actor); waiting and parked
        lanes are on disk and resume when it is loaded again. Told no, the core waits for
        `Idle`.
        """
        busy = (
            not self._started
            or self._handover is not None
            or any(lane.phase == "in_flight" for lane in self.lanes.values())
        )
        if self.actor_inbox or busy or self._suspended:
            self.owes_idle = not self._suspended
            return False
        return True

    def _step(self, message: Any) -> None:
        if isinstance(message, RouteChannel):
            if self.conversation.status == "closed":
                # Closed after the core picked this actor: the core opens a new one.
                self.deps.core.tell(Bounced(message))
                return
            message = message.event
        ctx = self.deps.context(self.conversation)
        self.deps.journal.note(self.conversation.conversation_id, ctx.now, message)
        was_open = self.conversation.status == "open"
        before = self.lanes
        step = handle(self.conversation, self.lanes, message, ctx)
        self.conversation, self.lanes = step.conversation, step.lanes
        self._carry_out(step, was_open, before)

    def _crash(self, message: Any, exc: Exception) -> None:
        """What this actor holds may be half-changed: it stops taking messages, and the core
        starts it again from the store (the state every earlier step left there)."""
        _log.error(
            "conversation_crashed", **self.about(), message=type(message).__name__, exc_info=exc
        )
        if self._unsaved is not None:  # on disk before its supervisor reads it back
            self._save_new()
        self.suspend()
        error = f"{type(exc).__name__}: {exc}"
        c = self.conversation
        self.deps.core.tell(Crashed(c.conversation_id, message, error, c.bot, c.asset))

    def _carry_out(self, step: Step, was_open: bool, before: Mapping[str, Lane]) -> None:
        """`before`: the lanes as they were, so that a delivery saved again in the state it
        already had (re-parked once loaded again, a dead head whose answer came late) is not
        counted twice."""
        now = self.deps.clock.now()
        cid = step.conversation.conversation_id
        writes: list[Write] = []
        unsaved = self._unsaved is not None
        if step.changed or unsaved:
            writes.append(SaveConversation(step.conversation, now))
        writes.extend(SaveSession(s) for s in step.sessions)
        user = step.conversation.user
        writes.extend(SaveOutbound(asset, user, mid, cid) for asset, mid in step.outbound)
        for session in step.sessions:
            if session.status != "open":
                _log.info(
                    "agent_session_ended",
                    **self.about(),
                    ccsp_conversation_id=session.ccsp_conversation_id,
                    status=session.status,
                )
        for entry in step.transcript:
            # The first since the actor started, then every TRANSCRIPT_PRUNE_EVERY-th: one
            # actor per conversation writes its transcript, so this bounds its rows.
            prune = self._appended % TRANSCRIPT_PRUNE_EVERY == 0
            writes.append(AppendTranscript(cid, entry, prune))
            self._appended += 1
        then: list[Tell | TellAt] = [
            TellAt(w.at, self.deps.core, ToConversation(cid, w.event)) for w in step.wake
        ]
        for decision in step.decisions:
            match decision:
                case Save(delivery=d):
                    writes.append(SaveDelivery(d))
                    if d.status != "pending":
                        count_saved(self.deps.metrics, d, before)
                    if d.status == "dead":
                        _log.warning(
                            "delivery_dead_lettered",
                            **self.about(),
                            delivery_id=d.delivery_id,
                            dest=d.dest.key,
                            attempts=d.attempts,
                            error=d.last_error,
                            reason=d.reason,
                        )
                case Remove(delivery_id=delivery_id):
                    writes.append(RemoveDelivery(delivery_id))
                case Send(delivery=d):
                    then.append(self._send(d))
                case RetryAt(delivery_id=delivery_id, dest=dest, at=at):
                    # Through the core by id: this actor may have retired by then.
                    due = ToConversation(cid, RetryDue(delivery_id, dest.key, at))
                    then.append(TellAt(at, self.deps.core, due))
        if step.inbox_done is not None:
            writes.append(InboxDone(step.inbox_done, "rejected" if step.rejected else "done"))
            if step.rejected:
                _log.warning(
                    "event_rejected",
                    **self.about(),
                    inbox_id=step.inbox_done,
                    reason=step.rejected,
                )
        if writes or then:
            self.deps.edge.submit(Persist(tuple(writes), tuple(then)))
        if unsaved:
            del self._unsaved  # written: back to the class default, nothing held per actor
        if was_open and step.conversation.status == "closed":
            self.deps.core.tell(ConversationClosed(cid, step.conversation.key))

    def _send(self, delivery: Any) -> Tell:
        # The destination was removed (or is, before the Dispatch arrives): the attempt fails
        # so that the delivery ends as a dead letter, visible and replayable.
        outcome = DeliveryOutcome(
            delivery.delivery_id,
            delivery.dest.key,
            ok=False,
            attempted=True,
            error="unknown destination",
            inactive=False,
        )
        unknown = Tell(self.actor_ref, outcome)
        endpoint = self.deps.endpoints.get(delivery.dest.key)
        if endpoint is None:
            return unknown
        c = self.conversation
        return Tell(endpoint, Dispatch(delivery, self.actor_ref, c.bot, c.asset), unknown)
