"""The events conversation actors handled lately, daemon-wide, for the debug port.

One ring for every conversation instead of a history in each: a resident conversation costs
no more for it, and a person looking at one conversation sees what it handled recently
enough to still be in the ring.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from router.domain.timestamps import iso_timestamp


class Journal:
    def __init__(self, size: int = 4096) -> None:
        self._ring: deque[tuple[str, float, type, tuple[Any, ...]]] = deque(maxlen=size)

    def note(self, conversation_id: str, at: float, event: Any) -> None:
        """What is kept is the event's kind and its few telling values, never its body: the
        ring's memory stays small whatever the messages carry. They become a description
        only when someone looks, since every message a conversation handles is noted."""
        kind = type(event)
        known = _KINDS.get(kind) or _learn(event)
        self._ring.append((conversation_id, at, kind, known[0](event)))

    def of(self, conversation_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        found: list[dict[str, Any]] = []
        for cid, at, kind, values in reversed(self._ring):
            if cid == conversation_id:
                found.append({"at": iso_timestamp(at), **_described(kind, values)})
                if len(found) == limit:
                    break
        return found


_TELLING = ("dest_key", "ok", "error", "ccsp_conversation_id", "inbox_id", "delivery_id")
# Per kind of event, found once: what takes its telling values, and what they are called.
_KINDS: dict[type, tuple[Callable[[Any], tuple[Any, ...]], tuple[str, ...]]] = {}


def _learn(event: Any) -> tuple[Callable[[Any], tuple[Any, ...]], tuple[str, ...]]:
    """The telling fields the event's kind has, and `event` as "name" when it is a string (a
    channel event's own name: "Incoming message", ...), never when it is an inner event."""
    names = [n for n in _TELLING if hasattr(event, n)]
    if isinstance(getattr(event, "event", None), str):
        names.append("event")
    labels = tuple("name" if n == "event" else n for n in names)
    known = _KINDS[type(event)] = (_taker(names), labels)
    return known


def _taker(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda _event: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda event: (one(event),)
    return attrgetter(*names)


def _described(kind: type, values: tuple[Any, ...]) -> dict[str, Any]:
    view: dict[str, Any] = {"event": kind.__name__}
    for name, value in zip(_KINDS[kind][1], values, strict=True):
        if isinstance(value, str | int | float | bool):
            view[name] = value
    return view
