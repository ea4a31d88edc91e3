"""Properties of the payload parsers, over inputs hypothesis makes up: whatever arrives, the
answer is a parsed event or a 400 that says why, never another exception."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from router.http.inbound import InputError, parse_bot, parse_ccsp, parse_channel
from router.http.util import MAX_JSON_DEPTH, decode_json

PARSERS = (parse_channel, parse_bot, parse_ccsp)
KEYS = (
    "Event",
    "Userid",
    "Message",
    "MessageType",
    "Messageid",
    "Media",
    "PostbackPayload",
    "DeliveryStatus",
    "Description",
    "eventid",
    "conversation_id",
    "Conversationid",
    "message",
    "Messagetype",
    "trigger",
    "custom1",
)
EVENTS = (
    "Incoming message",
    "FB POSTBACK",
    "Message Delivery",
    "1001",
    "1002",
    "Handover",
    "Close",
    "Milestone Reached",
    "Notify",
    "Unhandled Message",
    "Custom Event",
    "Agent message",
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


def respell(key: str, draw: st.DrawFn) -> str:
    """The same key as a sender might spell it: any case, underscores anywhere."""
    chars = [c.upper() if draw(st.booleans()) else c.lower() for c in key]
    if draw(st.booleans()) and len(chars) > 1:
        chars.insert(draw(st.integers(1, len(chars) - 1)), "_")
    return "".join(chars)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=8, unique=True)):
        body[respell(key, draw)] = draw(st.sampled_from(EVENTS) | values)
    return body


def parses_or_refuses(parser: Any, body: Any) -> None:
    try:
        parser(body)
    except InputError as exc:
        assert exc.status == 400 and exc.code and exc.message


@settings(max_examples=400, deadline=None)
@given(body=bodies())
def test_any_object_parses_or_gets_a_400(body: dict[str, Any]) -> None:
    for parser in PARSERS:
        parses_or_refuses(parser, body)


@settings(max_examples=100, deadline=None)
@given(body=values)
def test_a_body_that_is_not_an_object_gets_a_400(body: Any) -> None:
    for parser in PARSERS:
        parses_or_refuses(parser, body)


@st.composite
def customer_messages(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    fields = {
        "Event": "Incoming message",
        "Userid": draw(st.text(min_size=1, max_size=20).filter(str.strip)),
        "Message": draw(st.text(min_size=1, max_size=10_000).filter(str.strip)),
        "Messageid": draw(st.text(min_size=1, max_size=40).filter(str.strip)),
    }
    return fields, {respell(k, draw): v for k, v in fields.items()}


@settings(max_examples=200, deadline=None)
@given(pair=customer_messages())
def test_any_spelling_of_the_documented_keys_reads_the_same(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    plain, respelled = pair
    assert parse_channel(respelled) == parse_channel(plain)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2_000))
def test_any_bytes_decode_or_get_a_400(raw: bytes) -> None:
    try:
        decode_json(raw)
    except InputError as exc:
        assert exc.status == 400 and exc.code == "invalid_json"


@settings(max_examples=50, deadline=None)
@given(depth=st.integers(1, 5_000), opener=st.sampled_from(["[", '{"a":']))
def test_nesting_past_the_limit_is_refused_before_anything_walks_it(
    depth: int, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    try:
        value = decode_json(raw)
    except InputError as exc:
        assert exc.status == 400
        assert depth > MAX_JSON_DEPTH or "not valid JSON" in exc.message  # orjson's own limit
    else:
        assert depth <= MAX_JSON_DEPTH and orjson.dumps(value) == raw.replace(b" ", b"")


def test_invalid_utf8_is_a_400_not_a_crash() -> None:
    for raw in (b'{"Message": "\xff\xfe"}', b"\xc3\x28", b'{"a": "\xed\xa0\x80"}'):
        try:
            decode_json(raw)
        except InputError as exc:
            assert exc.status == 400
        else:
            raise AssertionError(f"{raw!r} decoded")
