"""Delivery lanes: per conversation and destination, in order, with backoff and parking.

A lane holds the deliveries of one conversation to one destination. Only its head is
ever on the wire; a failing head holds back the rest of its own lane and nothing else.
Pure: every function takes a lane and returns the new lane with the decisions to carry out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import msgspec

from router.domain.model import Delivery, Destination

Phase = Literal["idle", "in_flight", "waiting", "parked"]


class Save(msgspec.Struct, frozen=True):
    """Write this delivery as it now is."""

    delivery: Delivery


class Remove(msgspec.Struct, frozen=True):
    """The delivery arrived: forget it."""

    delivery_id: int


class Send(msgspec.Struct, frozen=True):
    """Hand the delivery to its destination's endpoint for one attempt."""

    delivery: Delivery


class RetryAt(msgspec.Struct, frozen=True):
    delivery_id: int
    dest: Destination
    at: float


LaneDecision = Save | Remove | Send | RetryAt


MAX_RETRY_AFTER_S = 3600.0  # a destination's Retry-After is honoured up to an hour


@dataclass(frozen=True)
class Lane:
    dest: Destination
    queue: tuple[Delivery, ...] = ()
    phase: Phase = "idle"

    @property
    def head(self) -> Delivery | None:
        return self.queue[0] if self.queue else None


Result = tuple[Lane, list[LaneDecision]]


def restore(
    dest: Destination,
    deliveries: list[Delivery],
    *,
    now: float | None = None,
    max_age: float | None = None,
) -> Result:
    """Rebuild a lane from the store (a restart, or a conversation loaded again): resume
    where it stood."""
    lane = Lane(dest, tuple(deliveries), "idle")
    head = lane.head
    if head is None:
        return lane, []
    if any(d.status == "parked" for d in deliveries):
        return _reoffer(lane, now, max_age)
    if head.status == "retrying" and head.next_attempt_at is not None:
        return replace(lane, phase="waiting"), [
            RetryAt(head.delivery_id, dest, head.next_attempt_at)
        ]
    return replace(lane, phase="in_flight"), [Send(head)]


def _reoffer(lane: Lane, now: float | None, max_age: float | None) -> Result:
    """Offer a parked lane again: the endpoint parks it anew if it is still inactive, and
    nothing stays parked behind an endpoint that is back in service. Rows stay parked on
    disk until the endpoint answers, so a restart shows the same parked count throughout.
    One parked longer than `max_age` expires here, as at a release: a conversation loaded
    after its bot was reactivated must not send it days late."""
    decisions: list[LaneDecision] = []
    kept: list[Delivery] = []
    for d in lane.queue:
        if d.status != "parked":
            kept.append(d)
            continue
        if _too_old(d, now, max_age):
            decisions.append(Save(_expired(d)))
            continue
        kept.append(replace(d, status="pending", attempts=0, next_attempt_at=None))
    queue = tuple(kept)
    if not queue:
        return replace(lane, queue=(), phase="idle"), decisions
    return replace(lane, queue=queue, phase="in_flight"), [*decisions, Send(queue[0])]


def enqueue(lane: Lane, delivery: Delivery, now: float | None = None) -> Result:
    if lane.phase == "parked":
        parked_at = delivery.created_at if now is None else now
        delivery = replace(delivery, status="parked", parked_at=parked_at)
        return replace(lane, queue=(*lane.queue, delivery)), [Save(delivery)]
    queue = (*lane.queue, delivery)
    if lane.phase == "idle":
        return Lane(lane.dest, queue, "in_flight"), [Save(delivery), Send(queue[0])]
    return Lane(lane.dest, queue, lane.phase), [Save(delivery)]


def on_outcome(
    lane: Lane,
    delivery_id: int,
    *,
    ok: bool,
    attempted: bool,
    error: str | None,
    inactive: bool,
    now: float,
    delays: tuple[float, ...],
    retry_after: float | None = None,
) -> Result:
    """The endpoint's answer for the head: delivered, failed, or parked without an attempt.

    A destination that asked for time (429 with `Retry-After`) gets the later of the scheduled
    delay and what it asked for, at most an hour: it is busy, not broken."""
    head = lane.head
    if head is None or head.delivery_id != delivery_id or lane.phase != "in_flight":
        return lane, []  # stale: a restart or a release already moved on
    if head.status == "dead":
        # Withdrawn while its attempt was out: it stays a dead letter, whatever the answer.
        if attempted:
            head = replace(head, attempts=head.attempts + 1, last_error=error)
        return _advance(lane.dest, lane.queue[1:], [Save(head)])
    if ok:
        return _advance(lane.dest, lane.queue[1:], [Remove(delivery_id)])
    if attempted:
        head = replace(head, attempts=head.attempts + 1, last_error=error)
    if inactive:
        return _park(replace(lane, queue=(head, *lane.queue[1:])), now)
    if head.attempts > len(delays):
        dead = replace(head, status="dead", next_attempt_at=None, reason="retries_exhausted")
        return _advance(lane.dest, lane.queue[1:], [Save(dead)])
    delay = delays[head.attempts - 1]
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    at = now + delay
    head = replace(head, status="retrying", next_attempt_at=at)
    lane = replace(lane, queue=(head, *lane.queue[1:]), phase="waiting")
    return lane, [Save(head), RetryAt(head.delivery_id, lane.dest, at)]


def on_retry_due(lane: Lane, delivery_id: int, at: float | None = None) -> Result:
    head = lane.head
    if head is None or head.delivery_id != delivery_id or lane.phase != "waiting":
        return lane, []
    if at is not None and head.next_attempt_at != at:
        return lane, []  # a timer for an earlier retry of this delivery
    return replace(lane, phase="in_flight"), [Send(head)]


def release(lane: Lane, *, now: float | None = None, max_age: float | None = None) -> Result:
    """The integration is back: every parked delivery gets a fresh schedule, in order.

    With `now` and `max_age`, one parked for longer than that is a dead letter (`expired`)
    instead of reaching its destination days late.
    """
    if lane.phase != "parked":
        return lane, []
    decisions: list[LaneDecision] = []
    kept: list[Delivery] = []
    for d in lane.queue:
        if _too_old(d, now, max_age):
            decisions.append(Save(_expired(d)))
            continue
        kept.append(replace(d, status="pending", attempts=0, next_attempt_at=None, parked_at=None))
    queue = tuple(kept)
    lane = replace(lane, queue=queue, phase="in_flight" if queue else "idle")
    decisions.extend(Save(d) for d in queue)
    if queue:
        decisions.append(Send(queue[0]))
    return lane, decisions


def withdraw(lane: Lane, match: Callable[[Delivery], bool], reason: str) -> Result:
    """Take the matching deliveries out of the lane as dead letters, keeping the rest in order.

    A matching head whose attempt is out stays at the head, dead, until its outcome arrives:
    nothing behind it may overtake an attempt still on the wire.
    """
    decisions: list[LaneDecision] = []
    kept: list[Delivery] = []
    for index, d in enumerate(lane.queue):
        if not match(d) or d.status == "dead":
            kept.append(d)
            continue
        dead = replace(d, status="dead", next_attempt_at=None, reason=reason)
        decisions.append(Save(dead))
        if index == 0 and lane.phase == "in_flight":
            kept.append(dead)
    if not decisions:
        return lane, []
    queue = tuple(kept)
    if lane.phase == "waiting" and (not queue or queue[0].delivery_id != lane.queue[0].delivery_id):
        return _advance(lane.dest, queue, decisions)
    if not queue:
        return replace(lane, queue=(), phase="idle"), decisions
    return replace(lane, queue=queue), decisions


def _too_old(d: Delivery, now: float | None, max_age: float | None) -> bool:
    """Parked longer than `max_age` (counted from creation if it never recorded parking)."""
    if now is None or max_age is None:
        return False
    parked_at = d.parked_at if d.parked_at is not None else d.created_at
    return now - parked_at > max_age


def _expired(d: Delivery) -> Delivery:
    return replace(d, status="dead", next_attempt_at=None, reason="expired")


def _park(lane: Lane, now: float) -> Result:
    queue = tuple(
        replace(
            d,
            status="parked",
            next_attempt_at=None,
            parked_at=d.parked_at if d.parked_at is not None else now,
        )
        for d in lane.queue
    )
    return replace(lane, queue=queue, phase="parked"), [Save(d) for d in queue]


def _advance(
    dest: Destination, queue: tuple[Delivery, ...], decisions: list[LaneDecision]
) -> Result:
    """The lane with `queue` left: its head sent next, or idle. Made whole, not replaced
    twice over: this runs for every delivery that lands."""
    if not queue:
        return Lane(dest, queue, "idle"), decisions
    return Lane(dest, queue, "in_flight"), [*decisions, Send(queue[0])]
