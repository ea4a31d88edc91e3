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


def describe(event: Any) -> dict[str, Any]:
    """The event's kind and the few fields that tell one from another, never a body."""
    view: dict[str, Any] = {"event": type(event).__name__}
    for name in ("dest_key", "ok", "error", "ccsp_conversation_id", "inbox_id", "delivery_id"):
        value = getattr(event, name, None)
        if isinstance(value, str | int | float | bool):
            view[name] = value
    inner = getattr(event, "event", None)
    if isinstance(inner, str):
        view["name"] = inner  # a channel event's own name: "Incoming message", ...
    return view
