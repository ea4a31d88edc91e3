"""The values the pure core passes around: destinations and deliveries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DestKind = Literal["bot", "ccsp", "flow", "channel"]
DeliveryStatus = Literal["pending", "retrying", "parked", "dead"]


@dataclass(frozen=True)
class Destination:
    """Where a delivery goes; only `bot` destinations can be taken out of service."""

    kind: DestKind
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class Delivery:
    delivery_id: int
    conversation_id: str
    dest: Destination
    body: dict[str, Any] = field(hash=False, compare=False)
    created_at: float = 0.0
    attempts: int = 0
    status: DeliveryStatus = "pending"
    next_attempt_at: float | None = None
    last_error: str | None = None
    reason: str | None = None  # why a dead letter is dead: attempts spent, expired, withdrawn
    parked_at: float | None = None  # first parked while its integration was out of service
