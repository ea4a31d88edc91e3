"""What channels, bots and CCSPs send in: parsed and checked before anything is stored.

Keys are matched case-insensitively and without underscores, because the platform's own
documents spell the same field `Conversationid` and `conversation_id`. Whatever fails a
check raises `InputError`, which the HTTP layer turns into a 4xx JSON answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


class InputError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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
        self.by_fold: dict[str, str] = {fold(k): k for k in body}
        self.used: set[str] = set()

    def get(self, name: str) -> Any:
        key = self.by_fold.get(fold(name))
        if key is None:
            return None
        self.used.add(key)
        return self.original[key]

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
BOT_EVENTS = {
    "milestone reached": "Milestone Reached",
    "notify": "Notify",
    "unhandled message": "Unhandled Message",
    "custom event": "Custom Event",
    "close": "Close",
}


@dataclass(frozen=True)
class ChannelInput:
    event: str
    user: str
    message_id: str
    fields: dict[str, Any] = field(hash=False)

    @property
    def dedupe_key(self) -> str:
        if self.event == "Message Delivery":
            # One outbound message gets several reports (sent, delivered, read).
            return f"{self.event}|{self.message_id}|{self.fields.get('DeliveryStatus')}"
        return f"{self.event}|{self.message_id}"


def parse_channel(body: Any) -> ChannelInput:
    f = Fields(body)
    name = CHANNEL_EVENTS.get(f.req("Event").strip().lower())
    if name is None:
        raise bad_request(f"Event must be one of: {', '.join(CHANNEL_EVENTS.values())}")
    user = f.req("Userid")
    message_id = f.req("Messageid")
    fields: dict[str, Any]
    if name == "Incoming message":
        media = f.get("Media")
        message = f.text("Message", required=media is None, default="")
        fields = {
            "Message": message,
            "MessageType": f.text("MessageType", required=False, default="text"),
            "Media": media,
        }
    elif name == "FB POSTBACK":
        fields = {"PostbackPayload": f.req("PostbackPayload")}
    else:
        fields = {
            "DeliveryStatus": f.req("DeliveryStatus"),
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
            media = f.get("Media")
            fields = {
                "Message": f.text("message", required=media is None, default=""),
                "MessageType": f.text("Messagetype", required=False, default="text"),
                "Media": media,
            }
            f.get("Timestamp")
            return BotInput("reply", "1001", conversation_id, fields, f.extra())
        if eventid.strip() == "1002":
            conversation_id = f.req("conversation_id")
            f.get("Timestamp")
            return BotInput("handover", "1002", conversation_id, {}, f.extra())
        raise bad_request("eventid must be 1001 (reply) or 1002 (handover)")
    if event is None:
        raise bad_request("eventid or Event is required")
    name = BOT_EVENTS.get(event.strip().lower())
    if name is None:
        raise bad_request(f"Event must be one of: {', '.join(BOT_EVENTS.values())}")
    conversation_id = f.req("conversation_id")
    kind: BotKind = "close" if name == "Close" else "event"
    return BotInput(kind, name, conversation_id, {}, f.extra())


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
        media = f.get("Media")
        fields = {
            "Message": f.text("Message", required=media is None, default=""),
            "MessageType": f.text("MessageType", required=False, default="text"),
            "Media": media,
        }
        return CcspInput("message", ccsp_id, fields)
    if event == "close":
        return CcspInput("close", f.req("Conversationid"), {})
    raise bad_request("Event must be one of: Agent message, Close")
