"""The core: the directory of conversations and the one place that decides which
conversation actor an event belongs to, starting it, or a new conversation, when needed.

At most `max_live` conversation actors run; beyond that the least recently used idle one is
asked to retire. An actor that is not running is loaded from the store before it gets an
event, and events that arrive meanwhile wait, in order, for it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pykka import ActorDeadError

from actors.base import RouterActor, conversation_fields, tell
from actors.conversation import ROUTED, ConversationActor, ConversationDeps
from actors.messages import (
    Bounced,
    ConversationClosed,
    Crashed,
    EvictAll,
    Flush,
    Flushed,
    Forget,
    Forgotten,
    Idle,
    Inspect,
    Passivate,
    Restart,
    Restore,
    Resume,
    Retired,
    Supervised,
)
from actors.on_disk import AnyKey, KeysOnDisk
from actors.runtime import LoopActorRef, actor_of, evict
from router.domain import lanes as lane_ops
from router.domain.commands import RouteChannel, ToConversation
from router.domain.events import ConversationEvent
from router.domain.lanes import Lane, LaneDecision
from router.domain.model import Delivery
from router.domain.state import Conversation, conversation_key
from router.domain.supervision import RestartPolicy, SetAside, on_crash
from router.io.effects import Edge, Load, Loaded, Persist, Tell, TellAt
from router.io.records import InboxDone, InboxPoisoned

Routed = RouteChannel | ConversationEvent | Flush | Resume
ERASED_KEPT = 10_000  # erased conversations remembered, so their timers log nothing


@dataclass
class _Closing:
    """An identity whose conversation just closed, until that actor has flushed."""

    cid: str
    bounced: list[RouteChannel] = field(default_factory=list)
    held: list[RouteChannel] = field(default_factory=list)


class CoreActor(RouterActor):
    def __init__(
        self,
        deps_factory: Callable[[Any], ConversationDeps],
        edge: Edge,
        max_live: int,
        restarts: RestartPolicy | None = None,
        on_disk: KeysOnDisk | AnyKey | None = None,
    ) -> None:
        super().__init__()
        self._deps_factory = deps_factory
        self.edge = edge
        self.max_live = max_live
        # Identities that may have an open conversation on disk; any other opens a new one.
        self.on_disk = on_disk if on_disk is not None else AnyKey()
        # id -> ref, least recently used first
        self.live: OrderedDict[str, LoopActorRef[ConversationActor]] = OrderedDict()
        self.keys: dict[str, str] = {}  # identity -> id, for running open conversations
        self.key_of: dict[str, str] = {}  # and back: forgetting one must not scan them all
        self.retiring: dict[str, list[Routed]] = {}
        self.stale: set[str] = set()  # loads to repeat: issued before a Retired arrived
        self.forgotten: set[str] = set()  # being erased from the store: read as not found
        self.erased: OrderedDict[str, None] = OrderedDict()  # the latest, for quieter logs
        self.arrivals = 0  # orders events that wait on different loads
        self.closing: dict[str, _Closing] = {}
        self.busy: set[str] = set()  # could not retire; asked again once it says Idle
        self.passivating: set[str] = set()  # an operator asked it to go once it is idle
        self.closed: dict[str, str] = {}  # running, closed, to stop once idle: id -> identity
        self.loading: dict[str, list[tuple[int, Routed]]] = {}
        self.policy = restarts or RestartPolicy()
        self.restart_history: dict[str, tuple[float, ...]] = {}
        self.restarting: dict[str, list[Routed]] = {}  # crashed: events wait for the restart
        # Supervision of conversations with no integration (flow-only): restarts, poisoned.
        self.supervised = {"restarted": 0, "poisoned": 0}
        self.log = structlog.get_logger("router.core")

    def on_start(self) -> None:
        self.deps = self._deps_factory(self.actor_ref)

    def on_stop(self) -> None:
        for ref in self.live.values():
            ref.stop(block=False)

    def handle(self, message: Any) -> Any:
        match message:
            case Inspect():
                return {
                    **self.census(),
                    "max_live": self.max_live,
                    # Conversations with no integration are supervised here.
                    "flow_restarts": self.supervised["restarted"],
                    "flow_poisoned_events": self.supervised["poisoned"],
                }
            case EvictAll():
                live = list(self.live.values())
                for ref in live:
                    with contextlib.suppress(ActorDeadError):  # stopped under us already
                        evict(ref)  # its mail goes too: everything it stood for is on disk
                self.live.clear()
                return len(live)
            case Forget(conversations=items):
                return self._forget_all(items)
            case Forgotten(conversations=items):
                for erased, erased_key in items:
                    self.forgotten.discard(erased)
                    self._stale(erased, erased_key)  # a read under way may predate the erase
            case Passivate(conversation_id=wanted):
                if wanted in self.live and wanted not in self.retiring:
                    self._ask_to_retire(wanted)
                    if wanted in self.busy:
                        self.passivating.add(wanted)  # retired once it says Idle
                        return "when_idle"
                return "passivated"
            case RouteChannel():
                key = self._key(message)
                cid = self.keys.get(key)
                closing = self.closing.get(key)
                if closing is not None:
                    closing.held.append(message)
                elif cid is None:
                    lookup = f"key:{key}"
                    if lookup in self.loading or self.on_disk.may_hold(key):
                        self._load(lookup, message)
                    else:
                        self._open(message)
                else:
                    self._deliver(cid, message)
            case ToConversation(conversation_id=cid, event=event):
                self._deliver(cid, event)
            case Crashed():
                self._crashed(message)
            case Restart(conversation_id=cid):
                self._restart(cid)
            case Loaded():
                self._loaded(message)
            case Restore(conversation=conversation, deliveries=deliveries):
                lanes, decisions = self._restore_lanes(deliveries)
                self._spawn(conversation, lanes, decisions, persist=False)
            case ConversationClosed(conversation_id=cid, key=key):
                if self.keys.get(key) == cid:
                    self._unkey(cid)
                self.closed[cid] = key
                # Customer events it was sent after closing come back (Bounced) before its
                # Flushed; newer ones for the identity wait here, so the new conversation gets
                # them all in the order they came.
                self.closing[key] = _Closing(cid)
                self._deliver(cid, Flush())
                self._ask_to_retire(cid)
            case Bounced(message=bounced):
                closing = self.closing.get(self._key(bounced))
                if closing is not None:
                    closing.bounced.append(bounced)
                else:
                    self.handle(bounced)
            case Flushed(conversation_id=cid):
                for key, closing in list(self.closing.items()):
                    if closing.cid == cid:
                        del self.closing[key]
                        for pending in (*closing.bounced, *closing.held):
                            self.handle(pending)
            case Idle(conversation_id=cid):
                self.busy.discard(cid)
                if cid in self.closed or cid in self.passivating:
                    self._ask_to_retire(cid)
                    if cid not in self.busy:  # mail came in between: it is asked again later
                        self.passivating.discard(cid)
                self._evict()
            case Retired(conversation_id=cid):
                # A read of this conversation already under way, by id or by identity, may
                # predate its last write; reads of other conversations cannot.
                identity = self.key_of.get(cid) or self.closed.get(cid)
                self._forget(cid)
                lookups = {f"id:{cid}", f"key:{identity}"} if identity else {f"id:{cid}"}
                self.stale.update(lookup for lookup in lookups if lookup in self.loading)
                for item in self.retiring.pop(cid, []):
                    self._load(f"id:{cid}", item)
            case _:
                self.log.error("unexpected_message", message=repr(message))
        return None

    def census(self) -> dict[str, int]:
        """Conversation actors by state; read on the loop, between this actor's turns."""
        # An evicted actor waits in `live` (and in `retiring`) until its last writes are
        # durable; it is no longer in memory.
        leaving = sum(1 for cid in self.retiring if cid in self.live)
        return {
            "resident": len(self.live) - leaving,
            "loading": sum(1 for waiting in self.loading.values() if waiting),
            "retiring": len(self.retiring),
            "restarting": len(self.restarting),
        }

    @staticmethod
    def _key(message: RouteChannel) -> str:
        route = message.route
        return conversation_key(message.asset, message.user, route.service, route.target)

    def _deliver(self, cid: str, event: Routed) -> None:
        waiting = self.restarting.get(cid)
        if waiting is not None:
            waiting.append(event)
            return
        held = self.retiring.get(cid)
        if held is not None:
            held.append(event)
            return
        ref = self.live.get(cid)
        if ref is None:
            self._load(f"id:{cid}", event)
            return
        self.live.move_to_end(cid)
        if not tell(ref, event):  # stopped under us: start it again from the store
            self._forget(cid)
            self._load(f"id:{cid}", event)

    # -- supervision -----------------------------------------------------------------------

    def _crashed(self, message: Crashed) -> None:
        """Evict the crashed actor, keep what it had not handled, and start it again from the
        store after a backoff; past the restart intensity, set the failing event aside."""
        cid = message.conversation_id
        ref = self.live.get(cid)
        if ref is None or cid in self.restarting:
            return  # already taken care of: a crashed actor handles nothing more
        left: list[Any] = [*actor_of(ref).unhandled(), *evict(ref)]
        left = [m for m in left if isinstance(m, ROUTED)]
        left += self.retiring.pop(cid, [])
        key = self.key_of.get(cid)
        # A read of it still under way may predate the crashed actor's last writes.
        lookups = {f"id:{cid}", f"key:{key}"} if key else {f"id:{cid}"}
        self.stale.update(lookup for lookup in lookups if lookup in self.loading)
        self._forget(cid)
        if key is not None:
            self._set_key(key, cid)  # its customer events wait for the restart too
        now = self.deps.clock.now()
        decision = on_crash(self.restart_history.get(cid, ()), now, self.policy)
        if isinstance(decision, SetAside):
            self.restart_history.pop(cid, None)
            self.restarting[cid] = left
            self._supervise(message.bot, cid, "poisoned")
            writes = self._set_aside(message)
            # Once the last writes of the crashed actor are durable, so the load sees them.
            self.edge.submit(Persist(writes, (Tell(self.actor_ref, Restart(cid)),)))
            return
        self.restart_history[cid] = decision.history
        self.restarting[cid] = [message.event, *left]
        self._supervise(message.bot, cid, "restarted")
        self.log.warning(
            "conversation_restarting",
            **conversation_fields(cid, message.bot, message.asset),
            delay_s=decision.delay,
            restarts=len(decision.history),
            error=message.error,
        )
        restart = TellAt(now + decision.delay, self.actor_ref, Restart(cid))
        self.edge.submit(Persist((), (restart,)))

    def _set_aside(self, crashed: Crashed) -> tuple[InboxPoisoned, ...]:
        cid, event, error = crashed.conversation_id, crashed.event, crashed.error
        inner = event.event if isinstance(event, RouteChannel) else event
        inbox_id = getattr(inner, "inbox_id", None)
        self.log.error(
            "event_poisoned",
            **conversation_fields(cid, crashed.bot, crashed.asset),
            message=type(inner).__name__,
            inbox_id=inbox_id,
            error=error,
        )
        if inbox_id is None:
            return ()  # a timer or an outcome: what it was about is on disk and resumes
        return (InboxPoisoned(inbox_id, cid, error),)

    def _restart(self, cid: str) -> None:
        waiting = self.restarting.pop(cid, None)
        if waiting is None:
            return
        self._unkey(cid)  # the load sets it again, from what the store says
        for item in waiting or [Resume()]:
            self._load(f"id:{cid}", item)

    def _supervise(self, bot: str | None, cid: str, outcome: str) -> None:
        metrics = self.deps.metrics
        (metrics.poisoned if outcome == "poisoned" else metrics.restarts)(bot or "").inc()
        endpoint = self.deps.endpoints.get(f"bot:{bot}") if bot else None
        if endpoint is None or not tell(endpoint, Supervised(cid, outcome)):
            self.supervised[outcome] += 1

    def _forget_all(self, items: tuple[tuple[str, str], ...]) -> int:
        """See `Forget`: what was about these conversations, in memory, goes."""
        evicted = 0
        for cid, key in items:
            ref = self.live.get(cid)
            if ref is not None:
                with contextlib.suppress(ActorDeadError):
                    evict(ref)
                    evicted += 1
            self.restarting.pop(cid, None)
            self.retiring.pop(cid, None)
            self._forget(cid)
            self.forgotten.add(cid)
            self.erased[cid] = None
            if len(self.erased) > ERASED_KEPT:
                self.erased.popitem(last=False)
            self._stale(cid, key)
            if any(closing.cid == cid for closing in self.closing.values()):
                self.handle(Flushed(cid))  # it will never flush: what it held back goes on
        return evicted

    def _stale(self, cid: str, key: str) -> None:
        lookups = (f"id:{cid}", f"key:{key}")
        self.stale.update(lookup for lookup in lookups if lookup in self.loading)

    def _set_key(self, key: str, cid: str) -> None:
        old = self.keys.get(key)
        if old is not None and old != cid:
            self.key_of.pop(old, None)
        self.keys[key] = cid
        self.key_of[cid] = key

    def _unkey(self, cid: str) -> None:
        key = self.key_of.pop(cid, None)
        if key is not None and self.keys.get(key) == cid:
            del self.keys[key]

    def _forget(self, cid: str) -> None:
        self.live.pop(cid, None)
        self.closed.pop(cid, None)
        self.busy.discard(cid)
        self.passivating.discard(cid)
        self._unkey(cid)

    def _load(self, lookup: str, item: Routed) -> None:
        self.arrivals += 1
        waiting = self.loading.get(lookup)
        if waiting is not None:
            waiting.append((self.arrivals, item))
            return
        self.loading[lookup] = [(self.arrivals, item)]
        self.edge.submit(Load(lookup, self.actor_ref))

    def _loaded(self, message: Loaded) -> None:
        if message.lookup in self.stale:
            self.stale.discard(message.lookup)
            if message.lookup in self.loading:
                self.edge.submit(Load(message.lookup, self.actor_ref))
            return
        waiting = self.loading.pop(message.lookup, [])
        conversation = message.conversation
        if conversation is not None and conversation.conversation_id in self.forgotten:
            conversation = None  # read before its erase was on disk
        if message.failed:
            # Left unrouted in the store: routed again when the daemon next starts.
            self.log.error(
                "conversation_load_failed",
                **self._about(message.lookup, [item for _, item in waiting]),
                events=len(waiting),
            )
            return
        if not waiting:
            return  # its events already went with a load of the same conversation by id or key
        items = [item for _, item in waiting]
        kind, _, value = message.lookup.partition(":")
        if kind == "key":
            if conversation is not None:
                found = conversation.conversation_id
                running = found in self.live or found in self.retiring
                if running and self.keys.get(value) != found:
                    conversation = None  # it closed after the store was read
            if conversation is None:
                waiting = self._unrouted(waiting)
                if not waiting:
                    return
                conversation = self._start_new(waiting[0][1])
        elif conversation is None:
            if value not in self.erased:  # an erased one's timers still fall due: expected
                self.log.error("unknown_conversation", **conversation_fields(value, None, None))
            for item in items:
                inbox_id = getattr(item, "inbox_id", None)
                if inbox_id is not None:
                    self.edge.submit(Persist((InboxDone(inbox_id, "rejected"),)))
            return
        cid = conversation.conversation_id
        if cid not in self.live and cid not in self.retiring:
            lanes, decisions = self._restore_lanes(message.deliveries)
            self._spawn(conversation, lanes, decisions, persist=False)
        # Events for this conversation that wait on its other lookup go along, in arrival
        # order. That load stays tracked (emptied): its answer is then ignored, and a
        # Retired still marks it stale.
        others = [f"id:{cid}"] + (
            [f"key:{conversation.key}"] if conversation.status == "open" else []
        )
        for other in others:
            if other != message.lookup and other in self.loading:
                waiting += self.loading[other]
                self.loading[other] = []
        for _, item in sorted(waiting, key=lambda pair: pair[0]):
            self._deliver(cid, item)

    def _open(self, message: RouteChannel) -> None:
        """A customer with no conversation running and none on disk: a new one, unless the
        event may not open one (a delivery report)."""
        self.arrivals += 1
        if not self._unrouted([(self.arrivals, message)]):
            return
        conversation = self._start_new(message)
        self._deliver(conversation.conversation_id, message)

    def _start_new(self, first: Routed) -> Conversation:
        """The conversation `first` opens (the first event `_unrouted` kept), running and
        written with its first step."""
        assert isinstance(first, RouteChannel)
        conversation = self._new(first)
        self._spawn(conversation, {}, [], persist=True)
        return conversation

    def _unrouted(self, waiting: list[tuple[int, Routed]]) -> list[tuple[int, Routed]]:
        """No open conversation for the identity: events that may not open one (delivery
        reports) and come before the first that may are recorded as unrouted; that one opens
        it, and everything after it goes to it, in order."""
        kept: list[tuple[int, Routed]] = []
        for arrival, item in waiting:
            if not kept and isinstance(item, RouteChannel) and not item.opens:
                self.log.warning(
                    "channel_event_unrouted",
                    **conversation_fields(None, item.route.bot, item.asset),
                    reason="a delivery report for no open conversation",
                )
                self.edge.submit(Persist((InboxDone(item.event.inbox_id, "unrouted"),)))
            else:
                kept.append((arrival, item))
        return kept

    @staticmethod
    def _about(lookup: str, items: list[Routed]) -> dict[str, str | None]:
        """A load's conversation, as far as its lookup and waiting events tell: the ID for a
        load by ID, the asset and bot of a customer's first event for a load by identity."""
        kind, _, value = lookup.partition(":")
        first = next((i for i in items if isinstance(i, RouteChannel)), None)
        return conversation_fields(
            value if kind == "id" else None,
            first.route.bot if first is not None else None,
            first.asset if first is not None else None,
        )

    def _restore_lanes(
        self, deliveries: tuple[Delivery, ...]
    ) -> tuple[dict[str, Lane], list[LaneDecision]]:
        return restore_lanes(deliveries, self.deps.clock.now(), self.deps.max_parked_age)

    def _new(self, message: RouteChannel) -> Conversation:
        route = message.route
        return Conversation(
            conversation_id=self.deps.new_id(),
            asset=message.asset,
            channel=message.channel,
            user=message.user,
            service=route.service,
            mode=route.mode,
            bot=route.bot,
            ccsp=route.ccsp,
            flow=route.flow,
            created_at=self.deps.clock.now(),
            route="flow" if route.mode == "flow" else "bot",
        )

    def _spawn(
        self,
        conversation: Conversation,
        lanes: dict[str, Lane],
        decisions: list[LaneDecision],
        *,
        persist: bool,
    ) -> None:
        cid = conversation.conversation_id
        self.live[cid] = ConversationActor.start(
            conversation, lanes, self.deps, initial=decisions, persist_new=persist
        )
        if conversation.status == "open":
            self._set_key(conversation.key, cid)
            self.on_disk.add(conversation.key)
        self.deps.metrics.activations("new" if persist else "store").inc()
        self._evict()

    def _evict(self) -> None:
        excess = len(self.live) - len(self.retiring) - self.max_live
        if excess <= 0:
            return
        for cid in list(itertools.islice(self.live, excess + len(self.busy) + len(self.retiring))):
            if excess <= 0:
                return
            if cid not in self.retiring and cid not in self.busy:
                self._ask_to_retire(cid)
                excess -= 1

    def _ask_to_retire(self, cid: str) -> None:
        """A plain decision on the loop: the actor says whether it is idle, and if so leaves
        memory at once. Its events that come meanwhile wait until its last writes are
        durable, so that loading it again reads what it wrote."""
        ref = self.live.get(cid)
        if ref is None or cid in self.retiring:
            return
        if not actor_of(ref).try_retire():
            self.busy.add(cid)
            return
        evict(ref)  # its inbox is empty: nothing comes back
        self.deps.metrics.passivations.inc()
        self.retiring[cid] = []
        self.edge.submit(Persist((), (Tell(self.actor_ref, Retired(cid)),)))


def restore_lanes(
    deliveries: tuple[Delivery, ...], now: float | None = None, max_age: float | None = None
) -> tuple[dict[str, Lane], list[LaneDecision]]:
    grouped: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        grouped[delivery.dest.key].append(delivery)
    lanes: dict[str, Lane] = {}
    decisions: list[LaneDecision] = []
    for items in grouped.values():
        lane, more = lane_ops.restore(items[0].dest, items, now=now, max_age=max_age)
        lanes[lane.dest.key] = lane
        decisions.extend(more)
    return lanes, decisions
