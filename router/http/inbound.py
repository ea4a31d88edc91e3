"""What channels, bots and CCSPs send in: parsed and checked before anything is stored.

Keys are matched case-insensitively and without underscores, because the platform's own
documents spell the same field `Conversationid` and `conversation_id`. Whatever fails a
check raises `InputError`, which the HTTP layer turns into a 4xx JSON answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import orjson


class InputError(Exception):
    """A 4xx (or 503) answer: `headers` go with it (`Retry-After`), and `close` ends the
    connection after it, for a request whose body is left unread."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.close = close


def bad_request(message: str, code: str = "invalid_request") -> InputError:
    return InputError(400, code, message)


def row_id(raw: str, what: str) -> int:
    """A positive id that SQLite can hold; anything else is the caller's mistake."""
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{what} is a whole number, got {raw!r}") from None
    if not 0 < value < 2**63:
        raise bad_request(f"{what} must be between 1 and {2**63 - 1}")
    return value


def fold(key: str) -> str:
    return key.lower().replace("_", "")


class Fields:
    """A JSON object read by folded key, remembering which keys were consumed."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        self.original: dict[str, Any] = body
        self.by_fold: dict[str, list[str]] = {}
        for k in body:
            self.by_fold.setdefault(fold(k), []).append(k)
        self.used: set[str] = set()

    def get(self, name: str) -> Any:
        """A documented field; given twice under spellings that fold alike, neither wins."""
        keys = self.by_fold.get(fold(name))
        if keys is None:
            return None
        if len(keys) > 1:
            spellings = ", ".join(repr(k) for k in keys)
            raise bad_request(f"{name} is given more than once ({spellings})", "duplicate_field")
        self.used.update(keys)
        return self.original[keys[0]]

    def media(self) -> Any:
        """`Media` as sent; left out or null it is the documented placeholder `""`."""
        value = self.get("Media")
        return "" if value is None else value

    def text(self, name: str, *, required: bool = True, default: str | None = None) -> str | None:
        value = self.get(name)
        if value is None:
            if required:
                raise bad_request(f"{name} is required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise bad_request(f"{name} must be a string")
        value = str(value)
        if required and not value.strip():
            raise bad_request(f"{name} must not be empty")
        return value

    def req(self, name: str) -> str:
        value = self.text(name)
        assert value is not None
        return value

    def extra(self) -> dict[str, Any]:
        """The keys nobody consumed: custom parameters, passed on as sent."""
        return {k: v for k, v in self.original.items() if k not in self.used}


CHANNEL_EVENTS = {
    "incoming message": "Incoming message",
    "fb postback": "FB POSTBACK",
    "message delivery": "Message Delivery",
}
DELIVERY_STATUSES = {s.lower(): s for s in ("Sent", "Delivered", "Failed", "Read")}
BOT_EVENTS = {
    "handover": "Handover",
    "milestone reached": "Milestone Reached",
    "notify": "Notify",
    "unhandled message": "Unhandled Message",
    "custom event": "Custom Event",
    "close": "Close",
}


class ChannelInput(msgspec.Struct, frozen=True):
    event: str
    user: str
    message_id: str
    fields: dict[str, Any]

    @property
    def dedupe_key(self) -> str:
        """A JSON array, so no Messageid can fake another event's key with a separator."""
        # Per user: a bot may reuse its own Messageids across the customers of one asset.
        parts = [self.event, self.user, self.message_id]
        if self.event == "Message Delivery":
            # One outbound message gets several reports (sent, delivered, read).
            parts.append(self.fields["DeliveryStatus"])
        return orjson.dumps(parts).decode()


def parse_channel(body: Any) -> ChannelInput:
    f = Fields(body)
    name = CHANNEL_EVENTS.get(f.req("Event").strip().lower())
    if name is None:
        raise bad_request(f"Event must be one of: {', '.join(CHANNEL_EVENTS.values())}")
    user = f.req("Userid")
    message_id = f.req("Messageid")
    fields: dict[str, Any]
    if name == "Incoming message":
        media = f.media()
        message = f.text("Message", required=media == "", default="")
        fields = {
            "Message": message,
            "MessageType": f.text("MessageType", required=False, default=""),
            "Media": media,
        }
    elif name == "FB POSTBACK":
        fields = {"PostbackPayload": f.req("PostbackPayload")}
    else:
        given = f.get("DeliveryStatus")
        status = DELIVERY_STATUSES.get(given.strip().lower()) if isinstance(given, str) else None
        if status is None:
            raise bad_request(
                f"DeliveryStatus must be one of: {', '.join(DELIVERY_STATUSES.values())}",
                "invalid_delivery_status",
            )
        fields = {
            "DeliveryStatus": status,
            "Description": f.text("Description", required=False, default=""),
        }
    return ChannelInput(event=name, user=user, message_id=message_id, fields=fields)


BotKind = Literal["reply", "handover", "event", "close"]


@dataclass(frozen=True)
class BotInput:
    kind: BotKind
    event: str
    conversation_id: str
    fields: dict[str, Any] = field(hash=False)
    extra: dict[str, Any] = field(hash=False)
    message_id: str | None = None  # a reply's own Messageid, when the bot sent one

    @property
    def trigger(self) -> str:
        """The rule trigger this event fires (`milestone_reached`, `handover`, ...)."""
        return "handover" if self.kind == "handover" else self.event.lower().replace(" ", "_")


def parse_bot(body: Any) -> BotInput:
    f = Fields(body)
    eventid = f.text("eventid", required=False)
    event = f.text("Event", required=False)
    if eventid is not None:
        if eventid.strip() == "1001":
            conversation_id = f.req("conversation_id")
            media = f.media()
            fields = {
                "Message": f.text("message", required=media == "", default=""),
                "MessageType": f.text("Messagetype", required=False, default=""),
                "Media": media,
            }
            message_id = f.text("Messageid", required=False)
            if message_id is not None and not message_id.strip():
                raise bad_request("Messageid must not be empty")
            f.get("Timestamp")
            return BotInput("reply", "1001", conversation_id, fields, f.extra(), message_id)
        if eventid.strip() == "1002":
            return _handover(f, "1002")
        raise bad_request("eventid must be 1001 (reply) or 1002 (handover)")
    if event is None:
        raise bad_request("eventid or Event is required")
    name = BOT_EVENTS.get(event.strip().lower())
    if name is None:
        raise bad_request(f"Event must be one of: {', '.join(BOT_EVENTS.values())}")
    if name == "Handover":
        return _handover(f, name)
    conversation_id = f.req("conversation_id")
    kind: BotKind = "close" if name == "Close" else "event"
    return BotInput(kind, name, conversation_id, {}, f.extra())


def _handover(f: Fields, event: str) -> BotInput:
    """`eventid: 1002` or `Event: Handover`: the platform allows either, with the same effect."""
    conversation_id = f.req("conversation_id")
    f.get("Timestamp")
    return BotInput("handover", event, conversation_id, {}, f.extra())


@dataclass(frozen=True)
class CcspInput:
    kind: Literal["message", "close"]
    ccsp_conversation_id: str
    fields: dict[str, Any] = field(hash=False)


def parse_ccsp(body: Any) -> CcspInput:
    f = Fields(body)
    event = f.req("Event").strip().lower()
    if event == "agent message":
        ccsp_id = f.req("Conversationid")
        media = f.media()
        fields = {
            "Message": f.text("Message", required=media == "", default=""),
            "MessageType": f.text("MessageType", required=False, default=""),
            "Media": media,
        }
        return CcspInput("message", ccsp_id, fields)
    if event == "close":
        return CcspInput("close", f.req("Conversationid"), {})
    raise bad_request("Event must be one of: Agent message, Close")
