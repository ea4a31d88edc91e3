"""The conversation state machine: events in, state and lane decisions out."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from typing import Any

from router.domain.conversation import handle
from router.domain.events import (
    AgentClose,
    AgentMessage,
    BotClose,
    BotEvent,
    BotHandover,
    BotReply,
    ConversationEvent,
    CustomerEvent,
    DeliveryOutcome,
    HandoverDeadline,
    Release,
    Replay,
    RetryDue,
)
from router.domain.lanes import Lane, RetryAt, Save, Send
from router.domain.model import Delivery, Destination
from router.domain.state import Conversation, Mode
from router.domain.step import Context, Step, WakeAt

NOW = 1_700_000_000.25
STAMP = "2023-11-14 22:13:20.25"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d$")
DELAYS = (60.0, 300.0)
BOT = Destination("bot", "support-bot")
CCSP = Destination("ccsp", "agents")
CHANNEL = Destination("channel", "fb-page-1")
FLOW = Destination("flow", "crm")
BOT_BODY_KEYS = [
    "Conversationid",
    "ConversationType",
    "Message",
    "MessageType",
    "Messageid",
    "Media",
    "Channel",
    "Event",
    "Timestamp",
]


def make_ctx(now: float = NOW) -> Context:
    ids = itertools.count(1)
    return Context(
        now=now,
        delays=DELAYS,
        next_delivery_id=itertools.count(1).__next__,
        new_id=lambda: f"id-{next(ids)}",
    )


def conversation(mode: Mode = "bot_ccsp", **changes: Any) -> Conversation:
    conv = Conversation(
        conversation_id="conv-1",
        asset="fb-page-1",
        channel="FB",
        user="user-1",
        service="support",
        mode=mode,
        bot=None if mode == "flow" else "support-bot",
        ccsp="agents" if mode == "bot_ccsp" else None,
        flow="crm" if mode == "flow" else None,
        created_at=NOW - 100,
        route="flow" if mode == "flow" else "bot",
    )
    return replace(conv, **changes)


def message(text: str, inbox_id: int = 1, message_id: str = "m1") -> CustomerEvent:
    return CustomerEvent(
        inbox_id,
        "Incoming message",
        message_id,
        {"Message": text, "MessageType": "text", "Media": None},
    )


def agent_fields(text: str) -> dict[str, Any]:
    return {"Message": text, "MessageType": "text", "Media": None}


def sends(step: Step) -> list[Delivery]:
    return [d.delivery for d in step.decisions if isinstance(d, Send)]


def saves(step: Step) -> list[Delivery]:
    return [d.delivery for d in step.decisions if isinstance(d, Save)]


def run(
    conv: Conversation,
    lanes: dict[str, Lane],
    events: list[ConversationEvent],
    ctx: Context,
) -> tuple[Conversation, dict[str, Lane], list[Step]]:
    steps = []
    for event in events:
        step = handle(conv, lanes, event, ctx)
        conv, lanes = step.conversation, step.lanes
        steps.append(step)
    return conv, lanes, steps


def handed_over(ctx: Context) -> tuple[Conversation, dict[str, Lane]]:
    conv, lanes, _ = run(conversation(), {}, [message("hi"), BotHandover(2, {})], ctx)
    return conv, lanes


def test_customer_message_in_bot_mode_goes_to_bot() -> None:
    step = handle(conversation("bot"), {}, message("hello"), make_ctx())
    [sent] = sends(step)
    assert sent.dest == BOT
    assert sent.conversation_id == "conv-1"
    assert sent.created_at == NOW
    assert list(sent.body) == BOT_BODY_KEYS
    assert sent.body == {
        "Conversationid": "conv-1",
        "ConversationType": "BOT",
        "Message": "hello",
        "MessageType": "text",
        "Messageid": "m1",
        "Media": "",
        "Channel": "FB",
        "Event": "Incoming message",
        "Timestamp": STAMP,
    }
    assert TIMESTAMP.match(sent.body["Timestamp"])
    assert [d.delivery_id for d in saves(step)] == [sent.delivery_id]
    assert step.lanes[BOT.key].phase == "in_flight"


def test_customer_message_in_bot_ccsp_mode_before_handover_goes_to_bot_only() -> None:
    step = handle(conversation("bot_ccsp"), {}, message("hello"), make_ctx())
    [sent] = sends(step)
    assert sent.dest == BOT
    assert sent.body["ConversationType"] == "BOT"
    assert list(sent.body) == BOT_BODY_KEYS


def test_customer_message_is_remembered_in_transcript() -> None:
    step = handle(conversation("bot"), {}, message("hello"), make_ctx())
    # The transcript is appended on disk: the conversation itself is unchanged.
    assert not step.changed
    assert step.transcript == [
        {"From": "customer", "Message": "hello", "MessageType": "text", "Timestamp": STAMP},
    ]


def test_fb_postback_shape() -> None:
    event = CustomerEvent(3, "FB POSTBACK", "m7", {"PostbackPayload": "GET_STARTED"})
    step = handle(conversation("bot"), {}, event, make_ctx())
    [sent] = sends(step)
    assert sent.dest == BOT
    assert sent.body == {
        "Conversationid": "conv-1",
        "ConversationType": "BOT",
        "PostbackPayload": "GET_STARTED",
        "Messageid": "m7",
        "Channel": "FB",
        "Event": "FB POSTBACK",
        "Timestamp": STAMP,
    }
    assert step.transcript == []
    assert step.inbox_done == 3


def test_message_delivery_shape() -> None:
    event = CustomerEvent(
        4, "Message Delivery", "out-1", {"DeliveryStatus": "Read", "Description": "x"}
    )
    step = handle(conversation("bot"), {}, event, make_ctx())
    [sent] = sends(step)
    # Description goes to the bot only with a failure.
    assert sent.body == {
        "Conversationid": "conv-1",
        "ConversationType": "BOT",
        "Messageid": "out-1",
        "DeliveryStatus": "Read",
        "Channel": "FB",
        "Event": "Message Delivery",
        "Timestamp": STAMP,
    }
    assert step.transcript == []
    failed = CustomerEvent(5, "Message Delivery", "out-1", {"DeliveryStatus": "Failed"})
    [sent] = sends(handle(conversation("bot"), {}, failed, make_ctx()))
    assert (sent.body["DeliveryStatus"], sent.body["Description"]) == ("Failed", "")


def test_second_message_waits_behind_the_first() -> None:
    ctx = make_ctx()
    _, lanes, steps = run(conversation("bot"), {}, [message("a"), message("b", 2, "m2")], ctx)
    assert [d.body["Message"] for d in sends(steps[0])] == ["a"]
    assert sends(steps[1]) == []
    assert [d.body["Message"] for d in saves(steps[1])] == ["b"]
    assert [d.delivery_id for d in lanes[BOT.key].queue] == [1, 2]


def test_bot_reply_goes_to_channel() -> None:
    ctx = make_ctx()
    reply = BotReply(5, agent_fields("Hi there"), "r-1", {"customparam1": "a"})
    step = handle(conversation("bot"), {}, reply, ctx)
    [sent] = sends(step)
    assert sent.dest == CHANNEL
    assert sent.body == {
        "Userid": "user-1",
        "Message": "Hi there",
        "MessageType": "text",
        "Media": "",
        "Messageid": "r-1",
        "Channel": "FB",
        "Timestamp": STAMP,
        "customparam1": "a",
    }
    assert step.outbound == [("fb-page-1", "r-1")]
    assert step.transcript[-1]["From"] == "bot"
    assert step.inbox_done == 5


def test_handover_opens_ccsp_session() -> None:
    ctx = make_ctx()
    conv, lanes, steps = run(
        conversation(), {}, [message("hi"), BotReply(2, agent_fields("how can I help"))], ctx
    )
    custom = {"Skill": "billing", "Priority": 2}
    # The actor reads the transcript from the store and hands it over with the event.
    said = tuple(entry for step in steps for entry in step.transcript)
    step = handle(conv, lanes, BotHandover(3, custom, transcript=said), ctx)
    ccsp_id = step.conversation.ccsp_conversation_id
    assert ccsp_id is not None
    assert ccsp_id != conv.conversation_id
    assert step.conversation.route == "ccsp"
    assert step.changed
    [session] = step.sessions
    assert session.ccsp_conversation_id == ccsp_id
    assert session.ccsp == "agents"
    assert session.conversation_id == "conv-1"
    assert session.status == "open"
    assert session.at == NOW
    [sent] = sends(step)
    assert sent.dest == CCSP
    body = sent.body
    assert body["Event"] == "Handover"
    assert body["Conversationid"] == ccsp_id
    assert body["ConversationType"] == "CCSP"
    assert body["BotConversationid"] == "conv-1"
    assert body["Channel"] == "FB"
    assert body["Userid"] == "user-1"
    assert TIMESTAMP.match(body["Timestamp"])
    assert body["Skill"] == "billing"
    assert body["Priority"] == 2
    assert [(t["From"], t["Message"]) for t in body["Transcript"]] == [
        ("customer", "hi"),
        ("bot", "how can I help"),
    ]
    assert step.inbox_done == 3


def test_handover_custom_params_cannot_override_documented_fields() -> None:
    ctx = make_ctx()
    step = handle(conversation(), {}, BotHandover(1, {"Conversationid": "forged"}), ctx)
    [sent] = sends(step)
    assert sent.body["Conversationid"] == step.conversation.ccsp_conversation_id


def test_handover_in_bot_mode_opens_no_session() -> None:
    step = handle(conversation("bot"), {}, BotHandover(1, {}), make_ctx())
    assert step.conversation.route == "bot"
    assert step.sessions == []
    assert sends(step) == []
    assert step.inbox_done == 1


def test_handover_with_flows_invokes_each_flow() -> None:
    step = handle(conversation(), {}, BotHandover(1, {"Skill": "x"}, ("crm", "audit")), make_ctx())
    dests = [d.dest for d in sends(step)]
    assert dests == [CCSP, FLOW, Destination("flow", "audit")]
    flow_body = sends(step)[1].body
    assert flow_body["Event"] == "Handover"
    assert flow_body["Skill"] == "x"


def test_handover_while_with_agent_opens_no_second_session() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    step = handle(conv, lanes, BotHandover(3, {}), ctx)
    assert step.sessions == []
    assert step.conversation.ccsp_conversation_id == conv.ccsp_conversation_id
    assert step.decisions == []


def test_customer_message_with_agent_goes_to_ccsp_and_copy_to_bot() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    ccsp_id = conv.ccsp_conversation_id
    step = handle(conv, lanes, message("need a human", 3, "m3"), ctx)
    by_dest = {d.dest: d.body for d in saves(step)}
    assert set(by_dest) == {BOT, CCSP}
    assert by_dest[CCSP]["Conversationid"] == ccsp_id
    assert by_dest[CCSP]["ConversationType"] == "CCSP"
    assert by_dest[CCSP]["Message"] == "need a human"
    assert by_dest[CCSP]["Messageid"] == "m3"
    assert list(by_dest[CCSP]) == BOT_BODY_KEYS
    assert by_dest[BOT]["Conversationid"] == "conv-1"
    assert by_dest[BOT]["ConversationType"] == "CCSP"
    assert by_dest[BOT]["Message"] == "need a human"
    assert list(by_dest[BOT]) == BOT_BODY_KEYS
    assert step.inbox_done == 3


def test_agent_message_goes_to_channel_and_copy_to_bot() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    assert conv.ccsp_conversation_id is not None
    event = AgentMessage(4, conv.ccsp_conversation_id, agent_fields("Agent here"))
    step = handle(conv, lanes, event, ctx)
    by_dest = {d.dest: d.body for d in saves(step)}
    assert set(by_dest) == {CHANNEL, BOT}
    assert by_dest[CHANNEL]["Message"] == "Agent here"
    assert by_dest[CHANNEL]["Userid"] == "user-1"
    assert by_dest[BOT] == {
        "Conversationid": "conv-1",
        "ConversationType": "CCSP",
        "Message": "Agent here",
        "MessageType": "text",
        "Media": "",
        "Channel": "FB",
        "Event": "Agent message",
        "Timestamp": STAMP,
    }
    assert [d.dest for d in sends(step)] == [CHANNEL]
    assert step.transcript[-1]["From"] == "agent"
    assert step.inbox_done == 4


def test_agent_close_returns_route_to_bot() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    ccsp_id = conv.ccsp_conversation_id
    assert ccsp_id is not None
    step = handle(conv, lanes, AgentClose(5, ccsp_id), ctx)
    assert step.conversation.route == "bot"
    assert step.conversation.ccsp_conversation_id is None
    assert step.conversation.status == "open"
    [session] = step.sessions
    assert (session.ccsp_conversation_id, session.status) == (ccsp_id, "closed")
    assert step.inbox_done == 5


def test_agent_close_for_other_session_is_ignored() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    step = handle(conv, lanes, AgentClose(5, "someone-else"), ctx)
    assert step.conversation == conv
    assert step.sessions == []
    assert not step.changed
    assert step.inbox_done == 5


def test_after_agent_close_customer_goes_to_bot_only() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    assert conv.ccsp_conversation_id is not None
    conv, lanes, _ = run(conv, lanes, [AgentClose(3, conv.ccsp_conversation_id)], ctx)
    step = handle(conv, lanes, message("back again", 4, "m4"), ctx)
    [queued] = saves(step)
    assert queued.dest == BOT
    assert queued.body["Conversationid"] == "conv-1"
    assert queued.body["ConversationType"] == "BOT"


def test_next_handover_gets_a_new_ccsp_id() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    first = conv.ccsp_conversation_id
    assert first is not None
    conv, lanes, _ = run(conv, lanes, [AgentClose(3, first)], ctx)
    step = handle(conv, lanes, BotHandover(4, {}), ctx)
    second = step.conversation.ccsp_conversation_id
    assert second is not None
    assert second != first
    assert step.conversation.route == "ccsp"
    handovers = [d for d in saves(step) if d.dest == CCSP]
    assert [d.body["Conversationid"] for d in handovers] == [second]


def test_bot_close_closes_conversation() -> None:
    step = handle(conversation("bot"), {}, BotClose(6), make_ctx())
    assert step.conversation.status == "closed"
    assert step.conversation.closed_at == NOW
    assert step.changed
    assert step.decisions == []
    assert step.inbox_done == 6


def test_bot_close_of_closed_conversation_changes_nothing() -> None:
    conv = conversation("bot", status="closed", closed_at=NOW - 5)
    step = handle(conv, {}, BotClose(7), make_ctx())
    assert step.conversation == conv
    assert not step.changed
    assert step.inbox_done == 7


def test_flow_mode_customer_message_goes_to_flow() -> None:
    step = handle(conversation("flow"), {}, message("hello"), make_ctx())
    [sent] = sends(step)
    assert sent.dest == FLOW
    assert sent.body == {
        "Messageid": "m1",
        "Message": "hello",
        "MessageType": "text",
        "Media": None,
        "Event": "Incoming message",
        "Conversationid": "conv-1",
        "Userid": "user-1",
        "Channel": "FB",
        "Asset": "fb-page-1",
        "Timestamp": STAMP,
    }
    assert step.inbox_done == 1


def test_bot_event_goes_to_each_flow() -> None:
    event = BotEvent(8, "Milestone Reached", {"Milestone": "paid"}, ("crm", "audit"))
    step = handle(conversation("bot"), {}, event, make_ctx())
    sent = sends(step)
    assert [d.dest for d in sent] == [FLOW, Destination("flow", "audit")]
    assert len({d.delivery_id for d in sent}) == 2
    for delivery in sent:
        assert delivery.body["Event"] == "Milestone Reached"
        assert delivery.body["Milestone"] == "paid"
        assert delivery.body["Conversationid"] == "conv-1"
    assert step.inbox_done == 8


def test_bot_event_without_flows_sends_nothing() -> None:
    step = handle(conversation("bot"), {}, BotEvent(9, "Notify", {}, ()), make_ctx())
    assert step.decisions == []
    assert step.inbox_done == 9


def test_inbox_done_set_for_every_inbound_event() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    ccsp_id = conv.ccsp_conversation_id
    assert ccsp_id is not None
    events: list[ConversationEvent] = [
        message("x", 11),
        BotReply(12, agent_fields("y")),
        BotEvent(13, "Notify", {}),
        AgentMessage(14, ccsp_id, agent_fields("z")),
        AgentClose(15, ccsp_id),
        BotHandover(16, {}),
        BotClose(17),
    ]
    _, _, steps = run(conv, lanes, events, ctx)
    assert [s.inbox_done for s in steps] == [11, 12, 13, 14, 15, 16, 17]


def test_inbox_done_not_set_for_delivery_events() -> None:
    ctx = make_ctx()
    conv, lanes, _ = run(conversation("bot"), {}, [message("a")], ctx)
    events: list[ConversationEvent] = [
        DeliveryOutcome(1, BOT.key, ok=False, attempted=True, error="boom", inactive=False),
        RetryDue(1, BOT.key),
        Release(BOT.key),
    ]
    _, _, steps = run(conv, lanes, events, ctx)
    assert [s.inbox_done for s in steps] == [None, None, None]


def test_delivery_outcome_drives_the_lane() -> None:
    ctx = make_ctx()
    conv, lanes, _ = run(conversation("bot"), {}, [message("a"), message("b", 2, "m2")], ctx)
    failed = DeliveryOutcome(1, BOT.key, ok=False, attempted=True, error="boom", inactive=False)
    step = handle(conv, lanes, failed, ctx)
    assert RetryAt(1, BOT, NOW + DELAYS[0]) in step.decisions
    step = handle(step.conversation, step.lanes, RetryDue(1, BOT.key), ctx)
    assert [d.delivery_id for d in sends(step)] == [1]
    ok = DeliveryOutcome(1, BOT.key, ok=True, attempted=True, error=None, inactive=False)
    step = handle(step.conversation, step.lanes, ok, ctx)
    assert [d.delivery_id for d in sends(step)] == [2]


def test_delivery_events_for_unknown_lane_are_ignored() -> None:
    ctx = make_ctx()
    conv = conversation("bot")
    for event in (
        DeliveryOutcome(1, "bot:gone", ok=True, attempted=True, error=None, inactive=False),
        RetryDue(1, "bot:gone"),
        Release("bot:gone"),
    ):
        step = handle(conv, {}, event, ctx)
        assert step.decisions == []
        assert step.lanes == {}


def test_release_resends_parked_lane() -> None:
    ctx = make_ctx()
    conv, lanes, _ = run(conversation("bot"), {}, [message("a")], ctx)
    parked = DeliveryOutcome(1, BOT.key, ok=False, attempted=False, error=None, inactive=True)
    conv, lanes, _ = run(conv, lanes, [parked], ctx)
    assert lanes[BOT.key].phase == "parked"
    step = handle(conv, lanes, Release(BOT.key), ctx)
    assert [d.delivery_id for d in sends(step)] == [1]


def test_replay_of_delivery_still_in_lane_is_ignored() -> None:
    ctx = make_ctx()
    conv, lanes, _ = run(conversation("bot"), {}, [message("a")], ctx)
    [queued] = lanes[BOT.key].queue
    step = handle(conv, lanes, Replay(replace(queued, status="dead")), ctx)
    assert step.decisions == []
    assert step.lanes == lanes
    assert step.inbox_done is None


def test_replay_of_dead_letter_enqueues_it_fresh() -> None:
    ctx = make_ctx()
    dead = Delivery(
        delivery_id=40,
        conversation_id="conv-1",
        dest=BOT,
        body={"Message": "old"},
        created_at=NOW - 1000,
        attempts=5,
        status="dead",
        last_error="HTTP 500",
    )
    step = handle(conversation("bot"), {}, Replay(dead), ctx)
    [revived] = sends(step)
    assert revived.delivery_id == 40
    assert revived.status == "pending"
    assert revived.attempts == 0
    assert revived.last_error is None
    assert revived.next_attempt_at is None
    assert revived.body == {"Message": "old"}


def test_handle_does_not_mutate_the_lanes_it_was_given() -> None:
    lanes: dict[str, Lane] = {}
    handle(conversation("bot"), lanes, message("a"), make_ctx())
    assert lanes == {}


def test_a_handover_deadline_that_fires_early_is_set_again() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    deadline = conv.handover_deadline_at
    assert conv.ccsp_conversation_id is not None and deadline is not None
    event = HandoverDeadline(conv.ccsp_conversation_id)
    step = handle(conv, lanes, event, make_ctx(deadline - 0.001))
    assert step.conversation.route == "ccsp"
    assert step.wake == [WakeAt(deadline, event)]
    step = handle(conv, lanes, event, make_ctx(deadline))
    assert step.conversation.route == "bot"
    assert step.sessions[-1].status == "abandoned"


def test_an_agent_message_counts_as_the_answer_to_the_handover() -> None:
    ctx = make_ctx()
    conv, lanes = handed_over(ctx)
    assert conv.ccsp_conversation_id is not None
    spoke = AgentMessage(9, conv.ccsp_conversation_id, agent_fields("hello"))
    step = handle(conv, lanes, spoke, ctx)
    assert step.conversation.handover_deadline_at is None
    late = handle(
        step.conversation,
        step.lanes,
        HandoverDeadline(conv.ccsp_conversation_id),
        make_ctx(NOW + 10_000),
    )
    assert late.conversation.route == "ccsp"
