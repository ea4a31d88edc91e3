"""What the router sends: the platform's documented bodies, spelled exactly.

A documented field the caller left out goes out as `""`, the platform's placeholder, so a
bot never has to tell a missing key from a null one.
"""

from __future__ import annotations

from typing import Any

from router.domain.timestamps import platform_timestamp


def _given(value: Any) -> Any:
    return "" if value is None else value


def customer_to_bot(
    event: str,
    fields: dict[str, Any],
    message_id: str,
    *,
    conversation_id: str,
    conversation_type: str,
    channel: str,
    now: float,
) -> dict[str, Any]:
    """A customer's event as a bot or CCSP receives it."""
    body: dict[str, Any] = {
        "Conversationid": conversation_id,
        "ConversationType": conversation_type,
    }
    if event == "Incoming message":
        body |= {
            "Message": _given(fields.get("Message")),
            "MessageType": _given(fields.get("MessageType")),
            "Messageid": message_id,
            "Media": _given(fields.get("Media")),
        }
    elif event == "FB POSTBACK":
        body |= {"PostbackPayload": fields["PostbackPayload"], "Messageid": message_id}
    else:
        body |= {"Messageid": message_id, "DeliveryStatus": fields["DeliveryStatus"]}
        if fields["DeliveryStatus"] == "Failed":  # "only in case of failures"
            body["Description"] = _given(fields.get("Description"))
    body |= {"Channel": channel, "Event": event, "Timestamp": platform_timestamp(now)}
    return body


def agent_copy_to_bot(
    fields: dict[str, Any], *, conversation_id: str, channel: str, now: float
) -> dict[str, Any]:
    """An agent's message, copied to the bot so that it can collate the conversation."""
    return {
        "Conversationid": conversation_id,
        "ConversationType": "CCSP",
        "Message": _given(fields.get("Message")),
        "MessageType": _given(fields.get("MessageType")),
        "Media": _given(fields.get("Media")),
        "Channel": channel,
        "Event": "Agent message",
        "Timestamp": platform_timestamp(now),
    }


def to_channel(
    fields: dict[str, Any],
    *,
    user: str,
    channel: str,
    message_id: str,
    now: float,
    custom: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A message for the customer; a bot's custom parameters ride along after the documented
    fields, which they never overwrite."""
    body: dict[str, Any] = {
        "Userid": user,
        "Message": _given(fields.get("Message")),
        "MessageType": _given(fields.get("MessageType")),
        "Media": _given(fields.get("Media")),
        "Messageid": message_id,
        "Channel": channel,
        "Timestamp": platform_timestamp(now),
    }
    for key, value in (custom or {}).items():
        body.setdefault(key, value)
    return body


def reply_failed(
    *,
    conversation_id: str,
    conversation_type: str,
    message_id: str,
    description: str,
    channel: str,
    now: float,
) -> dict[str, Any]:
    """A bot reply accepted but refused when processed, reported like a channel's failure."""
    return {
        "Conversationid": conversation_id,
        "ConversationType": conversation_type,
        "Messageid": message_id,
        "DeliveryStatus": "Failed",
        "Description": description,
        "Channel": channel,
        "Event": "Message Delivery",
        "Timestamp": platform_timestamp(now),
    }


def handover_failed(
    *,
    conversation_id: str,
    ccsp_conversation_id: str,
    reason: str,
    unanswered: list[str],
    channel: str,
    now: float,
) -> dict[str, Any]:
    return {
        "Event": "Handover Failed",
        "Conversationid": conversation_id,
        "ConversationType": "BOT",
        "CCSPConversationid": ccsp_conversation_id,
        "Reason": reason,
        "Unanswered": unanswered,
        "Channel": channel,
        "Timestamp": platform_timestamp(now),
    }


def session_closed(
    *, conversation_id: str, ccsp_conversation_id: str, reason: str, channel: str, now: float
) -> dict[str, Any]:
    return {
        "Event": "Agent Session Closed",
        "Conversationid": conversation_id,
        "ConversationType": "BOT",
        "CCSPConversationid": ccsp_conversation_id,
        "Reason": reason,
        "Channel": channel,
        "Timestamp": platform_timestamp(now),
    }


def ccsp_close(ccsp_conversation_id: str) -> dict[str, Any]:
    """The router ends an agent session (idle timeout, operator) the way an agent would."""
    return {"Event": "Close", "Conversationid": ccsp_conversation_id}


def handover(
    *,
    ccsp_conversation_id: str,
    bot_conversation_id: str,
    channel: str,
    user: str,
    transcript: list[dict[str, Any]],
    custom: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Event": "Handover",
        "Conversationid": ccsp_conversation_id,
        "ConversationType": "CCSP",
        "BotConversationid": bot_conversation_id,
        "Channel": channel,
        "Userid": user,
        "Timestamp": platform_timestamp(now),
        "Transcript": transcript,
    }
    return {**custom, **body}


def to_flow(
    event: str,
    *,
    conversation_id: str,
    channel: str,
    user: str,
    asset: str,
    data: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """A flow gets the triggering event, whatever it carried, under its Conversationid."""
    body: dict[str, Any] = {
        "Event": event,
        "Conversationid": conversation_id,
        "Userid": user,
        "Channel": channel,
        "Asset": asset,
        "Timestamp": platform_timestamp(now),
    }
    return {**data, **body}
