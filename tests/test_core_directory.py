"""The core's directory against a fake edge whose store reads answer when the test says."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from actors.conversation import ConversationActor, ConversationDeps
from actors.core import CoreActor
from actors.messages import ConversationClosed
from actors.runtime import Scheduler, actor_of
from router.domain.commands import RouteChannel, ToConversation
from router.domain.events import BotClose, CustomerEvent, RetryDue
from router.domain.rules import ChannelRoute
from router.domain.state import Conversation
from router.io.effects import Load, Loaded, Persist, TellAt
from router.io.records import AppendTranscript, InboxDone
from tests.clock import ManualClock

ROUTE = ChannelRoute(service="support", mode="bot", bot="b", ccsp=None, flow=None)


class FakeEdge:
    """Keeps loads for the test to answer; carries out writes at once."""

    def __init__(self) -> None:
        self.loads: list[Load] = []
        self.writes: list[Any] = []
        self.lock = threading.Lock()

    def submit(self, effect: Any) -> None:
        with self.lock:
            if isinstance(effect, Load):
                self.loads.append(effect)
            elif isinstance(effect, Persist):
                self.writes.extend(effect.writes)
                for item in effect.then:
                    if not isinstance(item, TellAt):
                        item.ref.tell(item.message)


def conversation(cid: str, user: str) -> Conversation:
    return Conversation(cid, "fb", "FB", user, "support", "bot", "b", None, None, 1.0)


def customer(user: str, n: int) -> RouteChannel:
    fields = {"Message": f"msg {n}", "MessageType": "text", "Media": None}
    return RouteChannel(
        ROUTE, "fb", "FB", user, CustomerEvent(n, "Incoming message", f"m{n}", fields)
    )


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Let the loop run the actors until `check` holds; bounded so a failure cannot hang."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.001)


def start_core(edge: FakeEdge, max_live: int, wrap: Callable[[Any], Any] = lambda r: r) -> Any:
    ids = itertools.count(100)

    def deps(core: Any) -> ConversationDeps:
        return ConversationDeps(
            edge=edge,
            core=wrap(core),
            endpoints={},
            clock=ManualClock(),
            delays=(60.0,),
            next_delivery_id=lambda: next(ids),
            new_id=lambda: f"new-{next(ids)}",
        )

    return CoreActor.start(deps, edge, max_live)


def live(core: Any) -> dict[str, Any]:
    """The core's directory, read directly: on one loop nothing changes it meanwhile."""
    return dict(core._actor_weakref().live)


async def test_a_read_that_predates_a_retirement_is_repeated_not_used() -> None:
    edge = FakeEdge()
    core = start_core(edge, max_live=1)
    core.tell(customer("ann", 1))
    core.tell(ToConversation("A", RetryDue(1, "bot:b")))
    await until(lambda: [x.lookup for x in edge.loads][1:] == ["id:A"])
    core.tell(Loaded(edge.loads[0].lookup, conversation("A", "ann")))
    await until(lambda: "A" in live(core))
    core.tell(customer("bob", 2))  # a second conversation: A is asked to retire
    await until(lambda: len(edge.loads) == 3)
    core.tell(Loaded(edge.loads[2].lookup, None))
    await until(lambda: "A" not in live(core))
    core.tell(ToConversation("A", RetryDue(1, "bot:b")))
    await settle()
    assert [x.lookup for x in edge.loads].count("id:A") == 1  # waits on the read already out
    core.tell(Loaded("id:A", conversation("A", "ann")))  # that read predates A's retirement
    await until(lambda: [x.lookup for x in edge.loads].count("id:A") == 2)
    assert "A" not in live(core)


async def settle() -> None:
    """Every actor with mail has run it (the fake edge answers nothing by itself)."""
    await asyncio.sleep(0)
    await until(lambda: Scheduler.current().idle)


class HearsClose:
    """Marks the moment a conversation reports closing to the core."""

    def __init__(self, ref: Any, told: threading.Event) -> None:
        self.ref = ref
        self.told = told

    def tell(self, message: Any) -> None:
        self.ref.tell(message)
        if isinstance(message, ConversationClosed):
            self.told.set()


async def test_events_bounced_by_a_closed_conversation_keep_their_place() -> None:
    edge = FakeEdge()
    told = threading.Event()
    core = start_core(edge, max_live=10, wrap=lambda r: HearsClose(r, told))
    core.tell(customer("ann", 1))
    await until(lambda: len(edge.loads) == 1)
    core.tell(Loaded(edge.loads[0].lookup, conversation("A", "ann")))
    await until(lambda: "A" in live(core))
    core.tell(ToConversation("A", BotClose(50)))
    core.tell(customer("ann", 2))  # reaches A after it closed
    await until(told.is_set)
    core.tell(customer("ann", 3))  # newer, and must stay behind msg 2
    await until(lambda: len(edge.loads) == 2, timeout=10)
    await until(lambda: "A" not in live(core))  # retired; a read issued before that is repeated
    lookup = edge.loads[1].lookup
    for _ in range(2):
        core.tell(Loaded(lookup, None))
        await settle()
    await until(lambda: any(cid != "A" for cid in live(core)))
    [new] = [cid for cid in live(core) if cid != "A"]

    def said() -> list[str]:
        return [
            w.entry["Message"]
            for w in edge.writes
            if isinstance(w, AppendTranscript) and w.conversation_id == new
        ]

    await until(lambda: len(said()) == 2)
    assert said() == ["msg 2", "msg 3"]


def report(user: str, n: int) -> RouteChannel:
    fields = {"DeliveryStatus": "Read"}
    event = CustomerEvent(n, "Message Delivery", f"out-{n}", fields)
    return RouteChannel(ROUTE, "fb", "FB", user, event, opens=False)


@pytest.mark.parametrize("report_first", [True, False])
async def test_a_report_opens_no_conversation_but_follows_one_opened_before_it(
    report_first: bool,
) -> None:
    edge = FakeEdge()
    core = start_core(edge, max_live=10)
    first, second = (report("ann", 1), customer("ann", 2))
    if not report_first:
        first, second = (customer("ann", 2), report("ann", 1))
    core.tell(first)
    core.tell(second)  # both wait on the same read of the identity
    await until(lambda: len(edge.loads) == 1)
    core.tell(Loaded(edge.loads[0].lookup, None))
    await until(lambda: len(live(core)) == 1)

    def finished() -> dict[int, str]:
        return {w.inbox_id: w.status for w in edge.writes if isinstance(w, InboxDone)}

    await until(lambda: set(finished()) == {1, 2})  # both events are done with, one way or another
    assert finished() == {1: "unrouted" if report_first else "done", 2: "done"}


def handled(edge: FakeEdge) -> list[int]:
    """Inbox ids of the events conversations finished, in the order they wrote them."""
    return [w.inbox_id for w in edge.writes if isinstance(w, InboxDone)]


async def test_events_for_a_passivated_conversation_wait_in_order_for_its_load() -> None:
    edge = FakeEdge()
    core = start_core(edge, max_live=1)
    core.tell(customer("ann", 1))
    await until(lambda: len(edge.loads) == 1)
    core.tell(Loaded(edge.loads[0].lookup, conversation("A", "ann")))
    await until(lambda: handled(edge) == [1])
    core.tell(customer("bob", 2))  # beyond max_live: ann's idle actor leaves memory
    await until(lambda: len(edge.loads) == 2)
    core.tell(Loaded(edge.loads[1].lookup, conversation("B", "bob")))
    await until(lambda: set(live(core)) == {"B"})
    for n in (3, 4, 5):  # ann writes again while her conversation is not resident
        core.tell(customer("ann", n))
    await until(lambda: len(edge.loads) == 3)
    await settle()
    assert len(edge.loads) == 3  # one read for all three
    assert handled(edge) == [1, 2]  # nothing handled before the state is back
    core.tell(Loaded(edge.loads[2].lookup, conversation("A", "ann")))
    await until(lambda: handled(edge) == [1, 2, 3, 4, 5])
    assert "A" in live(core)


async def test_an_actor_with_mail_is_not_passivated_until_it_is_idle() -> None:
    edge = FakeEdge()
    core = start_core(edge, max_live=1)
    core.tell(customer("ann", 1))
    await until(lambda: len(edge.loads) == 1)
    core.tell(Loaded(edge.loads[0].lookup, conversation("A", "ann")))
    # Ann's next events are told before bob's conversation pushes hers out: her actor has
    # mail when it is asked, says no, and leaves once it has handled them.
    core.tell(customer("ann", 2))
    core.tell(customer("bob", 3))
    await until(lambda: len(edge.loads) == 2)
    core.tell(Loaded(edge.loads[1].lookup, conversation("B", "bob")))
    await until(lambda: set(live(core)) == {"B"})
    assert sorted(handled(edge)) == [1, 2, 3]


async def test_a_conversation_is_not_idle_before_its_first_turn_has_written_it() -> None:
    edge = FakeEdge()
    deps = ConversationDeps(
        edge=edge,
        core=FakeCore(),
        endpoints={},
        clock=ManualClock(),
        delays=(60.0,),
        next_delivery_id=lambda: 1,
        new_id=lambda: "x",
    )
    ref = ConversationActor.start(conversation("N", "nia"), {}, deps, persist_new=True)
    actor = actor_of(ref)
    assert not actor.try_retire()  # evicting it now would lose the conversation
    await settle()
    assert [type(w).__name__ for w in edge.writes] == ["SaveConversation"]
    assert actor.try_retire()


class FakeCore:
    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)
