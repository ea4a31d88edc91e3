"""What the lanes decided, counted once per delivery: retries, parkings and dead letters.

A lane saves a delivery each time its state changes, and sometimes again in the state it
already had: a parked lane offered again once its conversation is loaded parks anew, and a
dead head whose attempt was out is saved once more when the answer comes. Those repeats are
not new events, so each save is weighed against the lanes as they were before the step.
"""

from __future__ import annotations

from collections.abc import Mapping

from router.domain.lanes import Lane
from router.domain.model import Delivery
from router.io.metrics import Metrics


def count_saved(metrics: Metrics, saved: Delivery, before: Mapping[str, Lane]) -> None:
    if saved.status == "retrying":
        metrics.retries(saved.dest.kind).inc()  # only a failed attempt schedules a retry
        return
    was = _previous(saved, before)
    if saved.status == "parked":
        # A delivery keeps `parked_at` until it is released, also while offered again.
        if was is None or was.parked_at is None:
            metrics.parked(saved.dest.id).inc()
    elif saved.status == "dead" and (was is None or was.status != "dead"):
        metrics.dead_letters(saved.dest.kind, saved.reason or "").inc()


def _previous(saved: Delivery, before: Mapping[str, Lane]) -> Delivery | None:
    lane = before.get(saved.dest.key)
    if lane is None:
        return None
    return next((d for d in lane.queue if d.delivery_id == saved.delivery_id), None)
