"""Intake: from a parsed, stored inbound event to the conversation actor it belongs to.

The HTTP doors call `check_*` before storing (so that a wrong request gets its 4xx) and
`route_*` after; a restart replays stored-but-unrouted events through the same two steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from actors.messages import RouteChannel, ToConversation
from router.config import AssetConfig, Config
from router.conversation import Conversation
from router.effects import Ref
from router.events import (
    AgentClose,
    AgentMessage,
    BotClose,
    BotEvent,
    BotHandover,
    BotReply,
    CustomerEvent,
    InboundEvent,
)
from router.inbound import BotInput, CcspInput, ChannelInput, InputError
from router.records import (
    InboxDone,
    apply_writes,
    get_conversation,
    session_with_conversation,
)
from router.rules import flows_for_bot_event, route_channel_event
from router.store import Store


def conflict(code: str, message: str) -> InputError:
    return InputError(409, code, message)


def unknown_conversation(conversation_id: str) -> InputError:
    return InputError(404, "unknown_conversation", f"no conversation {conversation_id!r}")


@dataclass
class Intake:
    config: Config
    store: Store
    core: Ref

    async def finish(self, inbox_id: int, status: str) -> None:
        """Record a stored event that will not reach a conversation (unrouted, rejected)."""
        await self.store.write(lambda conn: apply_writes(conn, (InboxDone(inbox_id, status),)))

    async def route_channel(self, asset: AssetConfig, event: ChannelInput, inbox_id: int) -> bool:
        """False when no rule of the asset's service takes the event; it is kept as unrouted."""
        route = route_channel_event(self.config, asset)
        if route is None:
            structlog.get_logger("router.intake").warning(
                "channel_event_unrouted", asset=asset.id, service=asset.service
            )
            await self.finish(inbox_id, "unrouted")
            return False
        customer = CustomerEvent(inbox_id, event.event, event.message_id, event.fields)
        self.core.tell(RouteChannel(route, asset.id, asset.channel, event.user, customer))
        return True

    async def check_bot(self, integration_id: str, event: BotInput) -> Conversation:
        conversation = await self.store.read(
            lambda conn: get_conversation(conn, event.conversation_id)
        )
        if conversation is None:
            raise unknown_conversation(event.conversation_id)
        if conversation.bot != integration_id:
            raise conflict("not_owner", "the conversation belongs to another integration")
        if conversation.status == "closed":
            raise conflict("conversation_closed", "the conversation is closed")
        if event.kind != "event" and conversation.route == "ccsp":
            raise conflict(
                "conversation_with_agent",
                "an agent holds the conversation; the bot only receives copies until the "
                "agent closes it",
            )
        return conversation

    def route_bot(
        self, integration_id: str, event: BotInput, conversation: Conversation, inbox_id: int
    ) -> None:
        routed: InboundEvent
        if event.kind == "reply":
            routed = BotReply(inbox_id, event.fields)
        elif event.kind == "handover":
            flows = flows_for_bot_event(
                self.config, conversation.service, integration_id, "handover"
            )
            routed = BotHandover(inbox_id, event.extra, flows)
        elif event.kind == "close":
            routed = BotClose(inbox_id)
        else:
            flows = flows_for_bot_event(
                self.config, conversation.service, integration_id, event.trigger
            )
            routed = BotEvent(inbox_id, event.event, event.extra, flows)
        self.core.tell(ToConversation(conversation.conversation_id, routed))

    async def check_ccsp(self, ccsp_id: str, event: CcspInput) -> Conversation:
        session, conversation = await self.store.read(
            lambda conn: session_with_conversation(conn, event.ccsp_conversation_id)
        )
        if session is None or conversation is None:
            raise unknown_conversation(event.ccsp_conversation_id)
        if session["ccsp"] != ccsp_id:
            raise conflict("not_owner", "the conversation belongs to another CCSP")
        if session["status"] != "open":
            raise conflict("conversation_closed", "the agent session is closed")
        return conversation

    def route_ccsp(self, event: CcspInput, conversation: Conversation, inbox_id: int) -> None:
        routed: InboundEvent
        if event.kind == "message":
            routed = AgentMessage(inbox_id, event.ccsp_conversation_id, event.fields)
        else:
            routed = AgentClose(inbox_id, event.ccsp_conversation_id)
        self.core.tell(ToConversation(conversation.conversation_id, routed))
