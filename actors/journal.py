"""The events conversation actors handled lately, daemon-wide, for the debug port.

One ring for every conversation instead of a history in each: a resident conversation costs
no more for it, and a person looking at one conversation sees what it handled recently
enough to still be in the ring.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from router.domain.timestamps import iso_timestamp


class Journal:
    def __init__(self, size: int = 4096) -> None:
        self._ring: deque[tuple[str, float, dict[str, Any]]] = deque(maxlen=size)

    def note(self, conversation_id: str, at: float, event: Any) -> None:
        """What is kept is the event's description, never its body: the ring's memory stays
        small whatever the messages carry."""
        self._ring.append((conversation_id, at, describe(event)))

    def of(self, conversation_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        found: list[dict[str, Any]] = []
        for cid, at, event in reversed(self._ring):
            if cid == conversation_id:
                found.append({"at": iso_timestamp(at), **event})
                if len(found) == limit:
                    break
        return found


_TELLING = ("dest_key", "ok", "error", "ccsp_conversation_id", "inbox_id", "delivery_id")
# Per kind of event, which of the telling fields it has: looked up once per kind, since
# every message a conversation handles is described.
_FIELDS: dict[type, tuple[str, ...]] = {}


def describe(event: Any) -> dict[str, Any]:
    """The event's kind and the few fields that tell one from another, never a body."""
    kind = type(event)
    view: dict[str, Any] = {"event": kind.__name__}
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(n for n in _TELLING if hasattr(event, n))
    for name in names:
        value = getattr(event, name, None)
        if isinstance(value, str | int | float | bool):
            view[name] = value
    inner = getattr(event, "event", None)
    if isinstance(inner, str):
        view["name"] = inner  # a channel event's own name: "Incoming message", ...
    return view
