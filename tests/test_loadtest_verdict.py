"""The load test's judgement and its mix, without a router: records in, verdict out."""

from __future__ import annotations

import pytest

from router.loadtest.mix import Mix, MixError, parse_mix
from router.loadtest.peers import stamp, unstamp
from router.loadtest.verdict import Arrival, Sent, judge


def sent(*mids: str) -> list[Sent]:
    return [Sent(m, m.rsplit(".", 1)[0], int(m.rsplit(".", 1)[1])) for m in mids]


def at(dest: str, *mids: str, conversation: str = "c1") -> list[Arrival]:
    return [Arrival(s.mid, s.stream, s.seq, dest, conversation) for s in sent(*mids)]


def test_everything_arrived_once_in_order() -> None:
    v = judge(sent("c.u1.1", "c.u1.2"), at("bot", "c.u1.1", "c.u1.2"))
    assert (v.accepted, v.delivered, v.lost, v.misordered, v.duplicates) == (2, 2, 0, 0, 0)
    assert v.ok


def test_a_message_that_never_arrived_is_lost_and_named() -> None:
    v = judge(sent("c.u1.1", "c.u1.2"), at("bot", "c.u1.1"))
    assert (v.lost, v.lost_examples, v.ok) == (1, ("c.u1.2",), False)


def test_an_earlier_message_after_a_later_one_is_misordered() -> None:
    v = judge(sent("c.u1.1", "c.u1.2"), at("bot", "c.u1.2", "c.u1.1"))
    assert (v.misordered, v.lost, v.ok) == (1, 0, False)


def test_order_is_judged_per_conversation_and_destination() -> None:
    # Either side of a close, or a bot and an agent, are not ordered between each other.
    arrivals = [
        *at("bot", "c.u1.2", conversation="new"),
        *at("bot", "c.u1.1", conversation="old"),
        *at("ccsp", "c.u1.3"),
        *at("bot-copy", "c.u1.3"),
    ]
    assert judge(sent("c.u1.1", "c.u1.2", "c.u1.3"), arrivals).ok


def test_a_second_arrival_at_one_destination_is_a_duplicate_not_a_misorder() -> None:
    v = judge(sent("c.u1.1", "c.u1.2"), at("bot", "c.u1.1", "c.u1.2", "c.u1.1"))
    assert (v.duplicates, v.misordered, v.ok) == (1, 0, True)


def test_a_copy_to_the_bot_alone_is_not_a_delivery() -> None:
    v = judge(sent("a.cc1.1", "c.u1.5"), at("bot-copy", "a.cc1.1", "c.u1.5"))
    assert (v.lost, v.delivered, v.ok) == (2, 0, False)


def test_a_message_refused_when_processed_and_reported_back_is_not_lost() -> None:
    v = judge(sent("r.c1.1"), [], excused=["r.c1.1"])
    assert (v.lost, v.excused, v.ok) == (0, 1, True)


def test_arrivals_of_messages_never_accepted_are_not_counted_as_delivered() -> None:
    v = judge(sent("c.u1.1"), at("bot", "c.u1.1", "c.u2.1"))
    assert (v.accepted, v.delivered) == (1, 1)


def test_a_stamp_carries_id_stream_sequence_and_time() -> None:
    found = unstamp(stamp("c.u17.42"))
    assert found is not None and found[:3] == ("c.u17.42", "c.u17", 42)
    assert unstamp("hello") is None and unstamp(None) is None


def test_a_mix_changes_only_what_it_names() -> None:
    mix = parse_mix("reply=0.8, handover=0.1")
    assert (mix.reply, mix.handover, mix.report) == (0.8, 0.1, Mix().report)


@pytest.mark.parametrize(
    "spec",
    [
        "reply",
        "replies=0.5",
        "reply=x",
        "reply=1.5",
        "handover=-1",
        "message=0,postback=0",
        "reply=0.6,handover=0.5",
    ],
)
def test_a_bad_mix_is_refused_with_a_reason(spec: str) -> None:
    with pytest.raises(MixError):
        parse_mix(spec)
