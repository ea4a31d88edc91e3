"""The core: the directory of conversations, keyed by identity, and the one place that
decides which conversation actor an event belongs to (or starts a new one)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pykka
import structlog

from actors.conversation import ConversationActor, ConversationDeps
from actors.messages import ConversationClosed, Restore, RouteChannel, ToConversation
from router import lanes as lane_ops
from router.conversation import Conversation, conversation_key
from router.effects import Edge, Persist, Ref
from router.lanes import Lane, LaneDecision
from router.model import Delivery
from router.records import InboxDone


class CoreActor(pykka.ThreadingActor):
    def __init__(self, deps_factory: Any, edge: Edge) -> None:
        super().__init__()
        self._deps_factory = deps_factory
        self.edge = edge
        self.by_key: dict[str, Ref] = {}
        self.by_id: dict[str, Ref] = {}
        self.deps: ConversationDeps | None = None
        self.log = structlog.get_logger("router.core")

    def on_start(self) -> None:
        self.deps = self._deps_factory(self.actor_ref)

    def on_stop(self) -> None:
        for ref in self.by_id.values():
            ref.stop()  # type: ignore[attr-defined]

    def on_receive(self, message: Any) -> None:
        match message:
            case RouteChannel():
                self._route_channel(message)
            case ToConversation(conversation_id=cid, snapshot=snapshot, event=event):
                ref = self.by_id.get(cid)
                if ref is None:
                    if snapshot is None:
                        self.log.error("unknown_conversation", conversation_id=cid)
                        inbox_id = getattr(event, "inbox_id", None)
                        if inbox_id is not None:
                            self.edge.submit(Persist((InboxDone(inbox_id, "rejected"),)))
                        return
                    ref = self._spawn(snapshot, {}, [], persist=False)
                ref.tell(event)
            case Restore(conversation=conversation, deliveries=deliveries):
                lanes, decisions = restore_lanes(deliveries)
                self._spawn(conversation, lanes, decisions, persist=False)
            case ConversationClosed(conversation_id=cid, key=key):
                if self.by_key.get(key) is self.by_id.get(cid):
                    self.by_key.pop(key, None)
            case _:
                self.log.error("unexpected_message", message=repr(message))

    def _route_channel(self, message: RouteChannel) -> None:
        route = message.route
        key = conversation_key(message.asset, message.user, route.service, route.target)
        ref = self.by_key.get(key)
        if ref is None:
            snapshot = message.snapshot
            if snapshot is not None and snapshot.conversation_id in self.by_id:
                snapshot = None  # that one closed while this event was on its way
            if snapshot is not None:
                ref = self._spawn(snapshot, {}, [], persist=False)
            else:
                assert self.deps is not None
                conversation = Conversation(
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
                ref = self._spawn(conversation, {}, [], persist=True)
        ref.tell(message.event)

    def _spawn(
        self,
        conversation: Conversation,
        lanes: dict[str, Lane],
        decisions: list[LaneDecision],
        *,
        persist: bool,
    ) -> Ref:
        assert self.deps is not None
        ref: Ref = ConversationActor.start(
            conversation, lanes, self.deps, initial=decisions, persist_new=persist
        )
        self.by_id[conversation.conversation_id] = ref
        if conversation.status == "open":
            self.by_key[conversation.key] = ref
        return ref


def restore_lanes(deliveries: tuple[Delivery, ...]) -> tuple[dict[str, Lane], list[LaneDecision]]:
    grouped: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        grouped[delivery.dest.key].append(delivery)
    lanes: dict[str, Lane] = {}
    decisions: list[LaneDecision] = []
    for items in grouped.values():
        lane, more = lane_ops.restore(items[0].dest, items)
        lanes[lane.dest.key] = lane
        decisions.extend(more)
    return lanes, decisions
