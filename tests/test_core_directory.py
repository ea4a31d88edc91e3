"""The core's directory against a fake edge whose store reads answer when the test says."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from actors.conversation import ConversationDeps
from actors.core import CoreActor
from actors.messages import ConversationClosed, Loaded, RouteChannel, ToConversation
from router.effects import Load, Persist, TellAt
from router.events import BotClose, CustomerEvent, RetryDue
from router.records import InboxDone
from router.rules import ChannelRoute
from router.state import Conversation
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


def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


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
    return dict(core.proxy().live.get())


def test_a_read_that_predates_a_retirement_is_repeated_not_used(stop_actors: None) -> None:
    edge = FakeEdge()
    core = start_core(edge, max_live=1)
    core.tell(customer("ann", 1))
    core.tell(ToConversation("A", RetryDue(1, "bot:b")))
    until(lambda: [x.lookup for x in edge.loads][1:] == ["id:A"])
    core.tell(Loaded(edge.loads[0].lookup, conversation("A", "ann")))
    until(lambda: "A" in live(core))
    core.tell(customer("bob", 2))  # a second conversation: A is asked to retire
    until(lambda: len(edge.loads) == 3)
    core.tell(Loaded(edge.loads[2].lookup, None))
    until(lambda: "A" not in live(core))
    core.tell(ToConversation("A", RetryDue(1, "bot:b")))
    time.sleep(0.05)
    assert [x.lookup for x in edge.loads].count("id:A") == 1  # waits on the read already out
    core.tell(Loaded("id:A", conversation("A", "ann")))  # that read predates A's retirement
    until(lambda: [x.lookup for x in edge.loads].count("id:A") == 2)
    assert "A" not in live(core)


class SlowToHearClose:
    """Holds up a conversation's thread right after it reports closing, as a preemption would."""

    def __init__(self, ref: Any, told: threading.Event) -> None:
        self.ref = ref
        self.told = told

    def tell(self, message: Any) -> None:
        self.ref.tell(message)
        if isinstance(message, ConversationClosed):
            self.told.set()
            time.sleep(0.3)


def test_events_bounced_by_a_closed_conversation_keep_their_place(stop_actors: None) -> None:
    edge = FakeEdge()
    told = threading.Event()
    core = start_core(edge, max_live=10, wrap=lambda r: SlowToHearClose(r, told))
    core.tell(customer("ann", 1))
    until(lambda: len(edge.loads) == 1)
    core.tell(Loaded(edge.loads[0].lookup, conversation("A", "ann")))
    until(lambda: "A" in live(core))
    core.tell(ToConversation("A", BotClose(50)))
    core.tell(customer("ann", 2))  # reaches A after it closed
    assert told.wait(5)
    core.tell(customer("ann", 3))  # newer, and must stay behind msg 2
    until(lambda: len(edge.loads) == 2, timeout=10)
    until(lambda: "A" not in live(core))  # retired; a read issued before that is repeated
    lookup = edge.loads[1].lookup
    for _ in range(2):
        core.tell(Loaded(lookup, None))
        time.sleep(0.05)
    until(lambda: any(cid != "A" for cid in live(core)))
    [new] = [ref for cid, ref in live(core).items() if cid != "A"]
    until(lambda: len(new.proxy().conversation.get().transcript) == 2)
    transcript = new.proxy().conversation.get().transcript
    assert [t["Message"] for t in transcript] == ["msg 2", "msg 3"]


def report(user: str, n: int) -> RouteChannel:
    fields = {"DeliveryStatus": "Read"}
    event = CustomerEvent(n, "Message Delivery", f"out-{n}", fields)
    return RouteChannel(ROUTE, "fb", "FB", user, event, opens=False)


@pytest.mark.parametrize("report_first", [True, False])
def test_a_report_opens_no_conversation_but_follows_one_opened_before_it(
    stop_actors: None, report_first: bool
) -> None:
    edge = FakeEdge()
    core = start_core(edge, max_live=10)
    first, second = (report("ann", 1), customer("ann", 2))
    if not report_first:
        first, second = (customer("ann", 2), report("ann", 1))
    core.tell(first)
    core.tell(second)  # both wait on the same read of the identity
    until(lambda: len(edge.loads) == 1)
    core.tell(Loaded(edge.loads[0].lookup, None))
    until(lambda: len(live(core)) == 1)
    [ref] = live(core).values()
    until(lambda: ref.proxy().routed.get() == (1 if report_first else 2))
    unrouted = [w for w in edge.writes if isinstance(w, InboxDone) and w.status == "unrouted"]
    assert unrouted == ([InboxDone(1, "unrouted")] if report_first else [])
