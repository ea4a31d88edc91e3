"""Delivery lanes: one head on the wire, backoff, dead letters, parking and release."""

from __future__ import annotations

from dataclasses import replace

from router.domain import lanes
from router.domain.lanes import Lane, LaneDecision, Remove, RetryAt, Save, Send
from router.domain.model import Delivery, Destination

BOT = Destination("bot", "support-bot")
DELAYS = (60.0, 300.0, 900.0)
NOW = 1_700_000_000.0


def delivery(delivery_id: int, **changes: object) -> Delivery:
    base = Delivery(
        delivery_id=delivery_id,
        conversation_id="conv-1",
        dest=BOT,
        body={"n": delivery_id},
        created_at=NOW,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def filled(*ids: int) -> Lane:
    lane = Lane(BOT)
    for delivery_id in ids:
        lane, _ = lanes.enqueue(lane, delivery(delivery_id))
    return lane


def sent(decisions: list[LaneDecision]) -> list[int]:
    return [d.delivery.delivery_id for d in decisions if isinstance(d, Send)]


def saved(decisions: list[LaneDecision]) -> list[Delivery]:
    return [d.delivery for d in decisions if isinstance(d, Save)]


def fail(
    lane: Lane,
    delivery_id: int,
    *,
    inactive: bool = False,
    attempted: bool = True,
    now: float = NOW,
) -> tuple[Lane, list[LaneDecision]]:
    return lanes.on_outcome(
        lane,
        delivery_id,
        ok=False,
        attempted=attempted,
        error="HTTP 500",
        inactive=inactive,
        now=now,
        delays=DELAYS,
    )


def succeed(lane: Lane, delivery_id: int) -> tuple[Lane, list[LaneDecision]]:
    return lanes.on_outcome(
        lane,
        delivery_id,
        ok=True,
        attempted=True,
        error=None,
        inactive=False,
        now=NOW,
        delays=DELAYS,
    )


def test_enqueue_on_idle_lane_saves_and_sends_it() -> None:
    lane, decisions = lanes.enqueue(Lane(BOT), delivery(1))
    assert decisions == [Save(delivery(1)), Send(delivery(1))]
    assert lane.phase == "in_flight"
    assert lane.head == delivery(1)


def test_only_the_head_is_sent() -> None:
    lane, _ = lanes.enqueue(Lane(BOT), delivery(1))
    lane, decisions = lanes.enqueue(lane, delivery(2))
    assert decisions == [Save(delivery(2))]
    lane, decisions = lanes.enqueue(lane, delivery(3))
    assert sent(decisions) == []
    assert [d.delivery_id for d in lane.queue] == [1, 2, 3]
    assert lane.phase == "in_flight"


def test_success_removes_head_and_sends_next() -> None:
    lane, decisions = succeed(filled(1, 2), 1)
    assert decisions == [Remove(1), Send(delivery(2))]
    assert [d.delivery_id for d in lane.queue] == [2]
    assert lane.phase == "in_flight"


def test_success_of_last_delivery_leaves_lane_idle() -> None:
    lane, decisions = succeed(filled(1), 1)
    assert decisions == [Remove(1)]
    assert lane.queue == ()
    assert lane.phase == "idle"


def test_enqueue_after_idle_again_sends_immediately() -> None:
    lane, _ = succeed(filled(1), 1)
    lane, decisions = lanes.enqueue(lane, delivery(2))
    assert sent(decisions) == [2]


def test_failure_schedules_retry_after_first_delay() -> None:
    lane, decisions = fail(filled(1, 2), 1)
    head = lane.head
    assert head is not None
    assert lane.phase == "waiting"
    assert head.status == "retrying"
    assert head.attempts == 1
    assert head.last_error == "HTTP 500"
    assert head.next_attempt_at == NOW + DELAYS[0]
    assert decisions == [Save(head), RetryAt(1, BOT, NOW + DELAYS[0])]
    assert sent(decisions) == []


def test_each_failure_uses_the_next_delay() -> None:
    lane = filled(1)
    for attempt, delay in enumerate(DELAYS, start=1):
        now = NOW + attempt * 10_000
        lane, decisions = fail(lane, 1, now=now)
        assert decisions[-1] == RetryAt(1, BOT, now + delay)
        assert lane.head is not None and lane.head.attempts == attempt
        lane, decisions = lanes.on_retry_due(lane, 1)
        assert sent(decisions) == [1]
        assert lane.phase == "in_flight"


def test_retry_due_sends_head_again() -> None:
    lane, _ = fail(filled(1, 2), 1)
    lane, decisions = lanes.on_retry_due(lane, 1)
    assert lane.phase == "in_flight"
    assert len(decisions) == 1
    assert sent(decisions) == [1]
    assert lane.head is not None and lane.head.attempts == 1


def test_head_becomes_dead_letter_after_all_retries_and_next_is_sent() -> None:
    lane = filled(1, 2)
    for _ in DELAYS:
        lane, _ = fail(lane, 1)
        lane, _ = lanes.on_retry_due(lane, 1)
    lane, decisions = fail(lane, 1)
    dead = saved(decisions)
    assert len(dead) == 1
    assert dead[0].delivery_id == 1
    assert dead[0].status == "dead"
    assert dead[0].attempts == 1 + len(DELAYS)
    assert dead[0].next_attempt_at is None
    assert dead[0].last_error == "HTTP 500"
    assert not any(isinstance(d, RetryAt) for d in decisions)
    assert sent(decisions) == [2]
    assert [d.delivery_id for d in lane.queue] == [2]
    assert lane.phase == "in_flight"


def test_dead_letter_on_last_delivery_leaves_lane_idle() -> None:
    lane = filled(1)
    for _ in DELAYS:
        lane, _ = fail(lane, 1)
        lane, _ = lanes.on_retry_due(lane, 1)
    lane, decisions = fail(lane, 1)
    assert [d.status for d in saved(decisions)] == ["dead"]
    assert sent(decisions) == []
    assert lane.queue == ()
    assert lane.phase == "idle"


def test_inactive_failure_parks_the_whole_lane() -> None:
    lane, decisions = fail(filled(1, 2, 3), 1, inactive=True)
    assert lane.phase == "parked"
    assert [d.status for d in lane.queue] == ["parked", "parked", "parked"]
    assert all(d.next_attempt_at is None for d in lane.queue)
    assert [d.delivery_id for d in saved(decisions)] == [1, 2, 3]
    assert all(d.status == "parked" for d in saved(decisions))
    assert sent(decisions) == []
    assert not any(isinstance(d, RetryAt) for d in decisions)
    assert lane.head is not None and lane.head.attempts == 1


def test_inactive_without_attempt_parks_without_counting() -> None:
    lane, _ = fail(filled(1), 1, inactive=True, attempted=False)
    assert lane.phase == "parked"
    assert lane.head is not None
    assert lane.head.attempts == 0
    assert lane.head.status == "parked"


def test_inactive_failure_on_last_retry_parks_instead_of_dead() -> None:
    lane = filled(1, 2)
    for _ in DELAYS:
        lane, _ = fail(lane, 1)
        lane, _ = lanes.on_retry_due(lane, 1)
    lane, decisions = fail(lane, 1, inactive=True)
    assert lane.phase == "parked"
    assert [d.delivery_id for d in lane.queue] == [1, 2]
    assert [d.status for d in lane.queue] == ["parked", "parked"]
    assert all(d.status == "parked" for d in saved(decisions))
    assert sent(decisions) == []


def test_enqueue_onto_parked_lane_saves_as_parked_and_sends_nothing() -> None:
    lane, _ = fail(filled(1), 1, inactive=True)
    lane, decisions = lanes.enqueue(lane, delivery(2))
    assert decisions == [Save(delivery(2, status="parked", parked_at=NOW))]
    assert saved(decisions)[0].status == "parked"
    assert lane.phase == "parked"
    assert [(d.delivery_id, d.status) for d in lane.queue] == [(1, "parked"), (2, "parked")]


def test_release_resets_and_sends_head() -> None:
    lane = filled(1, 2)
    lane, _ = fail(lane, 1)
    lane, _ = lanes.on_retry_due(lane, 1)
    lane, _ = fail(lane, 1, inactive=True)
    lane, _ = lanes.enqueue(lane, delivery(3))
    lane, decisions = lanes.release(lane)
    assert lane.phase == "in_flight"
    assert [(d.delivery_id, d.status, d.attempts) for d in lane.queue] == [
        (1, "pending", 0),
        (2, "pending", 0),
        (3, "pending", 0),
    ]
    assert all(d.next_attempt_at is None for d in lane.queue)
    assert [d.delivery_id for d in saved(decisions)] == [1, 2, 3]
    assert all(d.status == "pending" and d.attempts == 0 for d in saved(decisions))
    assert sent(decisions) == [1]
    assert isinstance(decisions[-1], Send)


def test_release_of_lane_that_is_not_parked_does_nothing() -> None:
    lane = filled(1, 2)
    assert lanes.release(lane) == (lane, [])
    waiting, _ = fail(lane, 1)
    assert lanes.release(waiting) == (waiting, [])
    assert lanes.release(Lane(BOT)) == (Lane(BOT), [])


def test_released_lane_gets_full_retry_schedule_again() -> None:
    lane = filled(1)
    for _ in DELAYS:
        lane, _ = fail(lane, 1)
        lane, _ = lanes.on_retry_due(lane, 1)
    lane, _ = fail(lane, 1, inactive=True)
    lane, _ = lanes.release(lane)
    lane, decisions = fail(lane, 1)
    assert decisions[-1] == RetryAt(1, BOT, NOW + DELAYS[0])
    assert lane.head is not None and lane.head.status == "retrying"


def test_outcome_for_other_delivery_is_ignored() -> None:
    lane = filled(1, 2)
    assert fail(lane, 2) == (lane, [])
    assert succeed(lane, 2) == (lane, [])
    assert succeed(lane, 99) == (lane, [])


def test_outcome_in_wrong_phase_is_ignored() -> None:
    waiting, _ = fail(filled(1, 2), 1)
    assert succeed(waiting, 1) == (waiting, [])
    assert fail(waiting, 1) == (waiting, [])
    parked, _ = fail(filled(1, 2), 1, inactive=True)
    assert succeed(parked, 1) == (parked, [])


def test_outcome_on_empty_lane_is_ignored() -> None:
    assert succeed(Lane(BOT), 1) == (Lane(BOT), [])


def test_retry_due_for_other_delivery_or_phase_is_ignored() -> None:
    lane = filled(1, 2)
    assert lanes.on_retry_due(lane, 1) == (lane, [])
    waiting, _ = fail(lane, 1)
    assert lanes.on_retry_due(waiting, 2) == (waiting, [])
    parked, _ = fail(lane, 1, inactive=True)
    assert lanes.on_retry_due(parked, 1) == (parked, [])
    assert lanes.on_retry_due(Lane(BOT), 1) == (Lane(BOT), [])


def test_restore_empty_lane() -> None:
    lane, decisions = lanes.restore(BOT, [])
    assert lane == Lane(BOT)
    assert decisions == []


def test_restore_retrying_head_schedules_retry() -> None:
    head = delivery(1, status="retrying", attempts=2, next_attempt_at=NOW + 42)
    lane, decisions = lanes.restore(BOT, [head, delivery(2)])
    assert decisions == [RetryAt(1, BOT, NOW + 42)]
    assert lane.phase == "waiting"
    assert lane.queue == (head, delivery(2))


def test_restore_retrying_head_without_time_sends() -> None:
    head = delivery(1, status="retrying", attempts=1)
    lane, decisions = lanes.restore(BOT, [head])
    assert decisions == [Send(head)]
    assert lane.phase == "in_flight"


def test_restore_pending_head_sends() -> None:
    lane, decisions = lanes.restore(BOT, [delivery(1), delivery(2)])
    assert decisions == [Send(delivery(1))]
    assert lane.phase == "in_flight"


def test_restore_offers_a_parked_lane_again_as_released() -> None:
    head = delivery(1, status="parked", attempts=5)
    lane, decisions = lanes.restore(BOT, [head, delivery(2, status="parked")])
    fresh = [replace(d, status="pending", attempts=0) for d in lane.queue]
    assert [d.status for d in lane.queue] == ["pending", "pending"]
    assert [d.attempts for d in lane.queue] == [0, 0]
    # Nothing is rewritten: on disk they stay parked until the endpoint answers.
    assert decisions == [Send(fresh[0])]
    assert lane.phase == "in_flight"


def test_restore_expires_what_was_parked_too_long() -> None:
    old = delivery(1, status="parked", parked_at=NOW - 500)
    young = delivery(2, status="parked", parked_at=NOW - 50)
    lane, decisions = lanes.restore(BOT, [old, young], now=NOW, max_age=100)
    [expired] = saved(decisions)
    assert (expired.delivery_id, expired.reason) == (1, "expired")
    assert sent(decisions) == [2]
    lane, decisions = lanes.restore(BOT, [old], now=NOW, max_age=100)
    assert (lane.phase, sent(decisions)) == ("idle", [])


def test_a_restored_parked_lane_runs_to_the_end_once_the_endpoint_accepts() -> None:
    lane, _ = lanes.restore(BOT, [delivery(1, status="parked"), delivery(2, status="parked")])
    lane, decisions = lanes.on_outcome(
        lane, 1, ok=True, attempted=True, error=None, inactive=False, now=NOW, delays=DELAYS
    )
    assert decisions == [Remove(1), Send(lane.queue[0])]
    assert lane.queue[0].delivery_id == 2
    assert lane.phase == "in_flight"


def test_restored_waiting_lane_resumes_on_retry_due() -> None:
    head = delivery(1, status="retrying", attempts=1, next_attempt_at=NOW + 60)
    lane, _ = lanes.restore(BOT, [head])
    lane, decisions = lanes.on_retry_due(lane, 1)
    assert decisions == [Send(head)]
    lane, decisions = fail(lane, 1)
    assert decisions[-1] == RetryAt(1, BOT, NOW + DELAYS[1])


def test_a_timer_left_from_an_earlier_retry_is_ignored() -> None:
    lane, _ = lanes.enqueue(Lane(BOT), delivery(1))
    lane, _ = lanes.on_outcome(
        lane, 1, ok=False, attempted=True, error="HTTP 500", inactive=False, now=NOW, delays=DELAYS
    )
    assert lanes.on_retry_due(lane, 1, at=NOW + 1) == (lane, [])
    lane, decisions = lanes.on_retry_due(lane, 1, at=NOW + DELAYS[0])
    assert decisions == [Send(lane.queue[0])]


def test_withdraw_removes_waiting_deliveries_and_sends_the_next_survivor() -> None:
    lane, _ = fail(filled(1, 2, 3), 1)
    assert lane.phase == "waiting"
    lane, decisions = lanes.withdraw(lane, lambda d: d.delivery_id in (1, 2), "session_abandoned")
    assert [(d.delivery_id, d.status, d.reason) for d in saved(decisions)] == [
        (1, "dead", "session_abandoned"),
        (2, "dead", "session_abandoned"),
    ]
    assert sent(decisions) == [3]
    assert (lane.phase, [d.delivery_id for d in lane.queue]) == ("in_flight", [3])


def test_withdraw_keeps_an_in_flight_head_until_its_outcome() -> None:
    lane = filled(1, 2)
    lane, decisions = lanes.withdraw(lane, lambda d: True, "session_abandoned")
    assert [d.delivery_id for d in saved(decisions)] == [1, 2]
    assert sent(decisions) == []
    assert (lane.phase, [d.delivery_id for d in lane.queue]) == ("in_flight", [1])
    # Whatever it gets, the withdrawn head is not retried and the lane is free again.
    lane, decisions = fail(lane, 1)
    assert [(d.status, d.attempts) for d in saved(decisions)] == [("dead", 1)]
    assert (lane.phase, lane.queue, sent(decisions)) == ("idle", (), [])


def test_withdraw_of_nothing_changes_nothing() -> None:
    lane = filled(1)
    assert lanes.withdraw(lane, lambda d: False, "x") == (lane, [])


def test_release_expires_what_was_parked_longer_than_the_limit() -> None:
    lane, _ = fail(filled(1), 1, inactive=True, now=NOW)
    lane, _ = lanes.enqueue(lane, delivery(2), NOW + 50)
    lane, decisions = lanes.release(lane, now=NOW + 120, max_age=100)
    [expired, kept] = saved(decisions)
    assert (expired.delivery_id, expired.status, expired.reason) == (1, "dead", "expired")
    assert (kept.delivery_id, kept.status, kept.parked_at) == (2, "pending", None)
    assert sent(decisions) == [2]


def test_a_restart_re_offers_parked_deliveries_keeping_when_they_were_parked() -> None:
    parked = [delivery(1, status="parked", parked_at=NOW - 500)]
    lane, decisions = lanes.restore(BOT, parked)
    assert sent(decisions) == [1]
    lane, decisions = fail(lane, 1, inactive=True, attempted=False, now=NOW)
    assert [d.parked_at for d in saved(decisions)] == [NOW - 500]
