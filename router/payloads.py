"""What the router sends: the platform's documented bodies, spelled exactly."""

from __future__ import annotations

from typing import Any

from router.clock import platform_timestamp


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
            "Message": fields["Message"],
            "MessageType": fields["MessageType"],
            "Messageid": message_id,
            "Media": fields["Media"],
        }
    elif event == "FB POSTBACK":
        body |= {"PostbackPayload": fields["PostbackPayload"], "Messageid": message_id}
    else:
        body |= {
            "Messageid": message_id,
            "DeliveryStatus": fields["DeliveryStatus"],
            "Description": fields["Description"],
        }
    body |= {"Channel": channel, "Event": event, "Timestamp": platform_timestamp(now)}
    return body


def agent_copy_to_bot(
    fields: dict[str, Any], *, conversation_id: str, channel: str, now: float
) -> dict[str, Any]:
    """An agent's message, copied to the bot so that it can collate the conversation."""
    return {
        "Conversationid": conversation_id,
        "ConversationType": "CCSP",
        "Message": fields["Message"],
        "MessageType": fields["MessageType"],
        "Media": fields["Media"],
        "Channel": channel,
        "Event": "Agent message",
        "Timestamp": platform_timestamp(now),
    }


def to_channel(
    fields: dict[str, Any], *, user: str, channel: str, message_id: str, now: float
) -> dict[str, Any]:
    return {
        "Userid": user,
        "Message": fields["Message"],
        "MessageType": fields["MessageType"],
        "Media": fields["Media"],
        "Messageid": message_id,
        "Channel": channel,
        "Timestamp": platform_timestamp(now),
    }


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
