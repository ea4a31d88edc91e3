"""The loop-driven actor type: pykka's API, on the asyncio loop, with no thread per actor."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pykka
import pytest

from actors.runtime import LoopActor, LoopFuture, Scheduler, actor_of, evict


class Recorder(LoopActor):
    def __init__(self, name: str = "r", log: list[Any] | None = None) -> None:
        super().__init__()
        self.name = name
        self.log = log if log is not None else []

    def on_start(self) -> None:
        self.log.append((self.name, "start"))

    def on_stop(self) -> None:
        self.log.append((self.name, "stop"))

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.log.append((self.name, message))
        return f"{self.name}:{message}"


async def drained(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0)


async def test_tells_run_in_order_after_on_start_on_the_loop_thread() -> None:
    log: list[Any] = []
    ref = Recorder.start("a", log)
    for n in range(5):
        ref.tell(n)
    await drained(lambda: len(log) == 6)
    assert log == [("a", "start"), *(("a", n) for n in range(5))]


async def test_an_actor_has_no_thread_event_uuid_or_registry_entry() -> None:
    before = threading.active_count()
    log: list[Any] = []
    refs = [Recorder.start(str(n), log) for n in range(2_000)]
    for ref in refs:
        ref.tell("hi")
    await drained(lambda: len(log) == 4_000)
    assert threading.active_count() == before
    assert pykka.ActorRegistry.get_all() == []
    ref = refs[0]
    assert not isinstance(ref.actor_stopped, threading.Event)
    assert ref.actor_urn.startswith("urn:loop-actor:")
    assert ref.is_alive()


async def test_asks_are_awaitable_on_the_loop_and_never_block_it() -> None:
    ref = Recorder.start("b")
    future = ref.ask("ping", block=False)
    assert isinstance(future, LoopFuture)
    assert await future == "b:ping"
    with pytest.raises(RuntimeError, match="await"):
        ref.ask("again")  # a blocking ask on the loop would deadlock it: refused
    with pytest.raises(ValueError, match="boom"):
        await ref.ask("boom", block=False)
    assert ref.is_alive()  # an ask that raises answers the caller; the actor goes on


async def test_tells_and_blocking_asks_from_another_thread() -> None:
    log: list[Any] = []
    ref = Recorder.start("c", log)

    def elsewhere() -> Any:
        for n in range(100):
            ref.tell(n)
        return ref.ask("last", timeout=5)

    answer = await asyncio.get_running_loop().run_in_executor(None, elsewhere)
    assert answer == "c:last"
    assert [m for _, m in log[1:]] == [*range(100), "last"]


async def test_stop_runs_on_stop_and_refuses_later_tells() -> None:
    log: list[Any] = []
    ref = Recorder.start("d", log)
    ref.tell("one")
    assert await ref.stop(block=False) is True
    assert log == [("d", "start"), ("d", "one"), ("d", "stop")]
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("two")
    assert await ref.stop(block=False) is False


async def test_asks_pending_at_a_stop_fail_with_actor_dead() -> None:
    ref = Recorder.start("e")
    ref.tell(pykka.messages._ActorStop())
    late = ref.ask("late", block=False)
    with pytest.raises(pykka.ActorDeadError):
        await late


async def test_a_tell_that_raises_stops_the_actor_and_calls_on_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[str] = []

    class Fragile(Recorder):
        def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
            failures.append(str(exception_value))

    ref = Fragile.start("f")
    with caplog.at_level(logging.ERROR, logger="actors.runtime"):
        ref.tell("boom")
        await drained(lambda: not ref.is_alive())
    assert failures == ["boom"]
    assert "Unhandled exception" in caplog.text


async def test_a_busy_actor_cannot_starve_the_others_or_the_loop() -> None:
    scheduler = Scheduler.current()
    order: list[str] = []

    class Chatty(LoopActor):
        def on_receive(self, message: Any) -> None:
            order.append(message)

    busy, quiet = Chatty.start(), Chatty.start()
    for _ in range(scheduler.messages_per_actor * 4):
        busy.tell("busy")
    quiet.tell("quiet")
    loop_ran = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(loop_ran.set_result, len(order))
    await drained(lambda: len(order) == scheduler.messages_per_actor * 4 + 1)
    # The quiet actor's one message ran after the busy one's first turn, not after all of it.
    assert order.index("quiet") == scheduler.messages_per_actor
    assert await loop_ran < len(order)


async def test_start_off_the_loop_is_refused() -> None:
    def off_loop() -> None:
        Recorder.start("g")

    with pytest.raises(RuntimeError, match="asyncio loop"):
        await asyncio.get_running_loop().run_in_executor(None, off_loop)


async def test_a_suspended_actor_keeps_its_mail_for_the_supervisor_that_evicts_it() -> None:
    log: list[Any] = []

    class Suspending(Recorder):
        def on_receive(self, message: Any) -> Any:
            if message == "crash":
                self.suspend()  # handles nothing more; what follows stays in the inbox
            return super().on_receive(message)

    ref = Suspending.start("s", log)
    for message in ("one", "crash", "two", "three"):
        ref.tell(message)
    waiting = ref.ask("asked", block=False)
    await drained(lambda: ("s", "crash") in log)
    ref.tell("four")  # told while suspended: kept too
    await asyncio.sleep(0)
    assert log == [("s", "start"), ("s", "one"), ("s", "crash")]
    assert evict(ref) == ["two", "three", "four"]
    assert log[-1] == ("s", "stop")
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        await waiting
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("five")


async def test_a_supervisor_reaches_the_actor_behind_a_ref_on_the_loop() -> None:
    ref = Recorder.start("a")
    actor = actor_of(ref)
    assert isinstance(actor, Recorder) and actor.name == "a"
    assert evict(ref) == []
    assert not ref.is_alive()


async def test_a_stopped_actor_is_freed_without_a_garbage_collection() -> None:
    import gc
    import weakref

    gc.disable()
    try:
        ref = Recorder.start("g")
        alive = weakref.ref(actor_of(ref))
        assert await ref.stop(block=False) is True
        await asyncio.sleep(0)  # the scheduler lets go of it after the turn
        assert alive() is None
        log: list[Any] = []
        evicted = Recorder.start("h", log)  # evicted before its first turn: never starts
        gone = weakref.ref(actor_of(evicted))
        evict(evicted)
        await drained(lambda: gone() is None)
        assert log == [("h", "stop")]
    finally:
        gc.enable()
