"""A conversation as it is stored: who it is with, where it routes, its agent session."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Mode = Literal["flow", "bot", "bot_ccsp"]
# A Handover carries the last this many messages. They are kept on disk, not with the
# conversation: only a handover reads them.
TRANSCRIPT_LENGTH = 20
# Older messages are deleted with every this many appends of a conversation (and with its
# first after it is started), not each: so its transcript holds at most
# TRANSCRIPT_LENGTH + TRANSCRIPT_PRUNE_EVERY - 1 rows, of which a handover reads the last.
TRANSCRIPT_PRUNE_EVERY = 8


def conversation_key(asset: str, user: str, service: str, target: str) -> str:
    """The identity a conversation ID is stable for: asset, user, service and bot (or flow)."""
    return orjson.dumps([asset, user, service, target]).decode()


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    asset: str
    channel: str
    user: str
    service: str
    mode: Mode
    bot: str | None
    ccsp: str | None
    flow: str | None
    created_at: float
    status: Literal["open", "closed"] = "open"
    route: Literal["bot", "ccsp", "flow"] = "bot"
    ccsp_conversation_id: str | None = None
    closed_at: float | None = None
    # The agent session in progress: its Handover until the CCSP answers it, when it was
    # last used by either side, and the customer messages it was sent.
    handover_delivery_id: int | None = None
    handover_deadline_at: float | None = None
    session_used_at: float | None = None
    session_messages: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        target = self.bot if self.mode != "flow" else f"flow:{self.flow}"
        return conversation_key(self.asset, self.user, self.service, target or "")

    def to_json(self) -> dict[str, Any]:
        """Plain data for the store. Field by field: `dataclasses.asdict` deep-copies every
        value, and this runs on every step."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["session_messages"] = list(self.session_messages)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        # A state stored before transcripts had rows of their own may still carry one.
        known = {k: v for k, v in data.items() if k in _NAMES}
        return cls(**{**known, "session_messages": tuple(data.get("session_messages", ()))})


_FIELDS = tuple(f.name for f in dataclasses.fields(Conversation))
_NAMES = frozenset(_FIELDS)


SessionStatus = Literal["open", "closed", "abandoned"]


@dataclass(frozen=True)
class CcspSession:
    ccsp_conversation_id: str
    ccsp: str
    conversation_id: str
    status: SessionStatus
    at: float
