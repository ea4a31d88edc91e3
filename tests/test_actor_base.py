"""A message that raises is logged and skipped; the actor keeps serving."""

from __future__ import annotations

import threading
from typing import Any

import pykka
from structlog.testing import capture_logs

from actors.base import RouterActor, tell


class Flaky(RouterActor):
    def __init__(self, seen: list[Any], done: threading.Event) -> None:
        super().__init__()
        self.seen = seen
        self.done = done

    def handle(self, message: Any) -> None:
        if message == "boom":
            raise ValueError("bad message")
        self.seen.append(message)
        self.done.set()


async def test_a_failing_message_does_not_stop_the_actor() -> None:
    seen: list[Any] = []
    done = threading.Event()
    with capture_logs() as logs:
        ref = Flaky.start(seen, done)
        ref.tell("boom")
        ref.tell("fine")
        assert await ref.stop(block=False)
    assert seen == ["fine"]
    assert logs[0]["event"] == "actor_message_failed"
    assert logs[0]["actor"] == "Flaky"
    assert logs[0]["log_level"] == "error"


async def test_telling_a_stopped_actor_is_reported_not_raised() -> None:
    ref = Flaky.start([], threading.Event())
    await ref.stop(block=False)
    assert tell(ref, "late") is False
    assert pykka.ActorRegistry.get_by_urn(ref.actor_urn) is None
