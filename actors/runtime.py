"""A pykka actor type driven by the asyncio loop: no thread, no Event, no registry entry.

pykka's `ThreadingActor` gives every actor an OS thread, which caps a process at tens of
thousands of actors and makes each message cross threads. `LoopActor` keeps pykka's API
(`ActorRef`, `tell`, `ask`, `on_start`/`on_stop`/`on_failure`) and plugs in at pykka's
extension points (`_create_actor_inbox`, `_create_future`, `_start_actor_loop`): its inbox is
a deque, and a woken actor joins its loop's ready queue, which one loop callback drains a
bounded number of actors and messages per turn, so one busy actor cannot starve the others
and the loop's own I/O runs between turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import threading
import weakref
from collections import deque
from collections.abc import Generator
from typing import Any, ClassVar, Self, TypeVar, cast

import pykka
from pykka import ActorDeadError, ActorRef, messages
from pykka._envelope import Envelope
from pykka._types import OptExcInfo

__all__ = ["LoopActor", "LoopActorRef", "LoopFuture", "Scheduler"]

log = logging.getLogger("actors.runtime")
_ids = itertools.count(1)


class _Flag:
    """What `ActorRef` needs of `actor_stopped`: `is_set()`; a bool, not a threading.Event."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


class Scheduler:
    """The ready queue of one loop: actors with mail, drained by a single loop callback."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Scheduler]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        actors_per_turn: int = 1024,
        messages_per_actor: int = 32,
    ) -> None:
        self.loop = loop
        self.actors_per_turn = actors_per_turn
        self.messages_per_actor = messages_per_actor
        self._ready: deque[LoopActor] = deque()
        self._scheduled = False
        self._thread = threading.get_ident()
        self.handled = 0  # messages handled on this loop, for the debug port's rate

    @classmethod
    def current(cls) -> Scheduler:
        """The running loop's scheduler, made on first use (on the loop's own thread)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("a LoopActor is created on its asyncio loop") from None
        found = cls._by_loop.get(loop)
        if found is None:
            found = cls._by_loop[loop] = cls(loop)
        return found

    @property
    def idle(self) -> bool:
        """No actor has mail waiting: what a test waits for instead of sleeping."""
        return not self._ready and not self._scheduled

    def on_loop(self) -> bool:
        return threading.get_ident() == self._thread

    def backlog(self) -> list[tuple[LoopActor, int]]:
        """Each actor with mail waiting, and how many messages: for a gauge read on the loop
        between turns, when every actor with mail is in the ready queue (a suspended one
        waits outside it for its supervisor, which evicts it). Costs the actors with mail,
        not every actor."""
        return [(actor, len(cast("LoopInbox", actor.actor_inbox))) for actor in self._ready]

    def wake(self, actor: LoopActor) -> None:
        """Queue an actor that has mail; safe from any thread."""
        if self.on_loop():
            self._ready_up(actor)
        else:
            try:
                self.loop.call_soon_threadsafe(self._ready_up, actor)
            except RuntimeError:  # the loop has closed: nothing will run it any more
                actor._scheduled = False

    def _ready_up(self, actor: LoopActor) -> None:
        self._ready.append(actor)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        ready = self._ready
        budget = self.actors_per_turn
        while ready and budget:
            budget -= 1
            actor = ready.popleft()
            if actor._run_turn(self.messages_per_actor):
                ready.append(actor)
                continue
            actor._scheduled = False
            # Mail put by another thread after the turn saw the inbox empty, and before the
            # flag dropped, would wait forever: look once more.
            if actor.actor_inbox and not actor.actor_stopped.is_set() and not actor._suspended:
                actor._scheduled = True
                ready.append(actor)
        if ready and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain)  # the loop's I/O and timers run in between


class LoopInbox:
    """A deque that wakes its actor when mail arrives; pykka's `ActorInbox` protocol.

    The deque exists only while mail waits: an empty one costs some 600 bytes, and most
    of a million resident actors have none.
    """

    __slots__ = ("_actor", "_queue")

    def __init__(self, actor: LoopActor) -> None:
        self._queue: deque[Envelope[Any]] | None = None
        self._actor: LoopActor | None = actor

    def put(self, envelope: Envelope[Any], /) -> None:
        actor = self._actor
        if actor is None:
            return  # stopped and released: a ref's tell refuses before it gets here
        scheduler = actor._scheduler
        if not scheduler.on_loop():
            # The deque is made and dropped on the loop: mail from another thread joins it
            # there, in the order that thread sent it.
            with contextlib.suppress(RuntimeError):  # the loop has closed
                scheduler.loop.call_soon_threadsafe(self.put, envelope)
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(envelope)
        if not actor._scheduled:
            actor._scheduled = True
            actor._scheduler.wake(actor)

    def get(self) -> Envelope[Any]:
        queue = self._queue
        if queue is None:
            raise IndexError("get from an empty inbox")
        envelope = queue.popleft()
        if not queue:
            self._queue = None
        return envelope

    def empty(self) -> bool:
        return self._queue is None

    def __len__(self) -> int:
        return 0 if self._queue is None else len(self._queue)

    def __bool__(self) -> bool:
        return self._queue is not None


class LoopFuture(pykka.Future[Any]):
    """A reply that a coroutine on the loop awaits without blocking it; another thread may
    still `get()` it, blocking only itself."""

    def __init__(self) -> None:
        super().__init__()
        self._done = False
        self._value: Any = None
        self._exc_info: OptExcInfo | None = None
        self._lock = threading.Lock()
        self._event: threading.Event | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def set(self, value: Any | None = None) -> None:
        self._settle(value, None)

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        self._settle(None, exc_info if exc_info is not None else sys.exc_info())

    def _settle(self, value: Any, exc_info: OptExcInfo | None) -> None:
        with self._lock:
            if self._done:
                raise RuntimeError("the future is already settled")
            self._done, self._value, self._exc_info = True, value, exc_info
            event, waiters, self._waiters = self._event, self._waiters, []
        if event is not None:
            event.set()
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_wake_waiter, waiter)

    def get(self, *, timeout: float | None = None) -> Any:
        if self._get_hook is not None:  # filter(), map(), join(): pykka's own composition
            return super().get(timeout=timeout)
        with self._lock:
            if not self._done:
                if self._on_a_running_loop():
                    raise RuntimeError("get() would block the event loop; await the future")
                if self._event is None:
                    self._event = threading.Event()
            event = self._event
        if not self._done and event is not None and not event.wait(timeout):
            raise pykka.Timeout(f"{timeout} seconds")
        return self._result()

    def __await__(self) -> Generator[Any, None, Any]:
        if self._get_hook is not None:
            return self.get()
        with self._lock:
            waiter: asyncio.Future[None] | None = None
            if not self._done:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
        if waiter is not None:
            yield from waiter.__await__()
        return self._result()

    __iter__ = __await__

    def _result(self) -> Any:
        if self._exc_info is not None:
            _, exc_value, traceback = self._exc_info
            assert exc_value is not None
            raise exc_value.with_traceback(traceback)
        return self._value

    @staticmethod
    def _on_a_running_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True


def _wake_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


A = TypeVar("A", bound="LoopActor")


class LoopActorRef(ActorRef[A]):
    """pykka's ref, typed by its actor's class, whose `stop(block=False)` is a future a
    coroutine can await."""

    def tell(self, message: Any) -> None:
        """pykka's `tell`, asking the stopped flag directly: every message between actors
        passes here, and `is_alive()` costs two method calls more."""
        if self.actor_stopped._set:  # type: ignore[attr-defined]
            raise ActorDeadError(f"{self} not found")
        self.actor_inbox.put(Envelope(message))

    def stop(self, block: bool = True, timeout: float | None = None) -> Any:
        if self.is_alive():
            future = self.ask(messages._ActorStop(), block=False)
        else:
            future = LoopFuture()
            future.set(False)
        return future.get(timeout=timeout) if block else future


class LoopActor(pykka.Actor):
    """An actor whose messages run on the asyncio loop it was created on.

    Created and started on that loop (`start()` from a coroutine or another loop actor);
    told from anywhere. `on_start` runs in its first turn, before any message.
    """

    _scheduled: bool
    _scheduler: Scheduler
    _suspended = False  # set on an instance only once it suspends: no slot per actor

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        # Not pykka.Actor.__init__: that makes a uuid and a threading.Event per actor.
        self._scheduler = Scheduler.current()
        self._scheduled = False
        self._started = False
        self.actor_urn = f"urn:loop-actor:{next(_ids)}"
        self.actor_inbox = self._create_actor_inbox_for(self)
        self.actor_stopped = _Flag()  # type: ignore[assignment]
        self._actor_ref = LoopActorRef(self)

    @property
    def actor_ref(self) -> LoopActorRef[Self]:
        return cast("LoopActorRef[Self]", self._actor_ref)

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> LoopActorRef[Self]:
        """Start without registering: a keyed directory finds actors, not the global
        `ActorRegistry` (a list, so removing one actor costs a scan of all)."""
        obj = cls(*args, **kwargs)
        obj._start_actor_loop()
        return obj.actor_ref

    @staticmethod
    def _create_actor_inbox() -> Any:
        raise TypeError("a LoopActor's inbox needs its actor; see _create_actor_inbox_for")

    @staticmethod
    def _create_actor_inbox_for(actor: LoopActor) -> LoopInbox:
        return LoopInbox(actor)

    @staticmethod
    def _create_future() -> LoopFuture:
        return LoopFuture()

    def _start_actor_loop(self) -> None:
        self._scheduled = True
        self._scheduler.wake(self)  # its first turn runs on_start

    # -- one turn on the loop --------------------------------------------------------------

    def _run_turn(self, limit: int) -> bool:
        """Handle up to `limit` messages; True while mail is left and the actor lives."""
        if not self._started and not self.actor_stopped.is_set():
            self._started = True
            try:
                self.on_start()
            except Exception:
                self._handle_failure(*sys.exc_info())
        inbox = self.actor_inbox
        handled = 0
        while inbox and handled < limit and not self.actor_stopped.is_set():
            if self._suspended:
                break
            self._handle_envelope(inbox.get())
            handled += 1
        self._scheduler.handled += handled
        if self.actor_stopped.is_set():
            self._teardown()
            self._release()
            return False
        return bool(inbox) and not self._suspended

    # -- supervision on the loop -----------------------------------------------------------

    def suspend(self) -> None:
        """Handle nothing more until a supervisor evicts this actor: the message being handled
        is the last, and what is in the inbox, or comes to it meanwhile, stays there in order."""
        self._suspended = True

    def evict(self) -> list[Any]:
        """Stop at once and hand back the messages told but not handled, in order.

        For a supervisor on the same loop, between this actor's turns: nothing is lost to a
        stop message queued behind them, and nothing told after it is accepted. Asks still
        waiting fail with `ActorDeadError`.
        """
        left: list[Any] = []
        inbox = self.actor_inbox
        while inbox:
            envelope = inbox.get()
            if envelope.reply_to is None:
                left.append(envelope.message)
            elif isinstance(envelope.message, messages._ActorStop):
                envelope.reply_to.set(None)
            else:
                dead = ActorDeadError(f"{self.actor_ref} was evicted before handling the message")
                envelope.reply_to.set_exception((ActorDeadError, dead, None))
        if not self.actor_stopped.is_set():
            self._stop()
        self._release()
        return left

    def _release(self) -> None:
        """Break the actor ↔ inbox cycle, so a stopped actor is freed as soon as nothing
        refers to it, without waiting for a full garbage collection: with a million resident
        actors those are long, and the daemon keeps them rare."""
        inbox = self.actor_inbox
        if isinstance(inbox, LoopInbox):
            inbox._actor = None

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())

    def _teardown(self) -> None:
        inbox = self.actor_inbox
        while inbox:
            envelope = inbox.get()
            if envelope.reply_to is None:
                continue
            if isinstance(envelope.message, messages._ActorStop):
                envelope.reply_to.set(None)
            else:
                dead = ActorDeadError(f"{self.actor_ref} stopped before handling the message")
                envelope.reply_to.set_exception((ActorDeadError, dead, None))

    def _handle_receive(self, message: Any) -> Any:
        if isinstance(message, messages._ActorStop):
            self._stop()
            return True  # what pykka's stop() answers for an actor that was alive
        return super()._handle_receive(message)

    def _stop(self) -> None:
        """As pykka's, without the registry."""
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception:
            self._handle_failure(*sys.exc_info())

    def _handle_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error(
            "Unhandled exception in %s:",
            self,
            exc_info=(exception_type, exception_value, traceback),
        )
        self.actor_stopped.set()


def actor_of(ref: LoopActorRef[A]) -> A:
    """The actor behind a ref, for its supervisor on the same loop: between the actor's
    turns, a synchronous call to it is a decision nothing can overtake."""
    inbox = ref.actor_inbox
    if not isinstance(inbox, LoopInbox):
        raise TypeError(f"{ref} is not a loop actor")
    if inbox._actor is None:
        raise ActorDeadError(f"{ref} has stopped")
    return cast(A, inbox._actor)


def evict(ref: LoopActorRef[Any]) -> list[Any]:
    """`LoopActor.evict` through the actor's ref, as a supervisor holds it."""
    actor: LoopActor = actor_of(ref)
    return actor.evict()
