"""Intake: from a parsed, stored inbound event to the conversation actor it belongs to.

The HTTP doors call `check_*` before storing (so that a wrong request gets its 4xx) and
`route_*` after; a restart replays stored-but-unrouted events through the same two steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from router.config.settings import AssetConfig, Config
from router.domain.commands import Ref, RouteChannel, ToConversation
from router.domain.events import (
    AgentClose,
    AgentMessage,
    BotClose,
    BotEvent,
    BotHandover,
    BotReply,
    CloseSession,
    CustomerEvent,
    InboundEvent,
)
from router.domain.rules import ChannelRoute, flows_for_bot_event, route_channel_event
from router.domain.state import Conversation
from router.http.inbound import BotInput, CcspInput, ChannelInput, InputError
from router.io.records import (
    InboxDone,
    apply_writes,
    get_conversation,
    outbound_conversation,
    session_with_conversation,
)
from router.io.store import Store

_log = structlog.get_logger("router.intake")


def conflict(code: str, message: str) -> InputError:
    return InputError(409, code, message)


def unknown_conversation(conversation_id: str) -> InputError:
    return InputError(404, "unknown_conversation", f"no conversation {conversation_id!r}")


@dataclass
class Intake:
    config: Config  # replaced whole by a reload
    store: Store
    core: Ref
    # Each asset's channel route under `config`, found once per config: not per message.
    _routes: dict[str, ChannelRoute | None] = field(default_factory=dict)
    _routes_of: Config | None = None

    def _route(self, asset: AssetConfig) -> ChannelRoute | None:
        if self._routes_of is not self.config:
            self._routes.clear()
            self._routes_of = self.config
        try:
            return self._routes[asset.id]
        except KeyError:
            route = route_channel_event(self.config, asset)
            if self.config.asset(asset.id) is asset:  # not one a reload has replaced since
                self._routes[asset.id] = route
            return route

    async def finish(self, inbox_id: int, status: str) -> None:
        """Record a stored event that will not reach a conversation (unrouted, rejected)."""
        write = InboxDone(inbox_id, status)
        await self.store.write(lambda conn: apply_writes(conn, (write,)), quick=True)

    def route_channel_now(self, asset: AssetConfig, event: ChannelInput, inbox_id: int) -> bool:
        """Route an event that needs nothing but its rule, without waiting: a customer's
        message to its conversation. False when it needs `route_channel`: no rule takes it,
        or it is a delivery report, whose sender is looked up."""
        if event.event == "Message Delivery":
            return False
        route = self._route(asset)
        if route is None:
            return False
        customer = CustomerEvent(inbox_id, event.event, event.message_id, event.fields)
        self.core.tell(RouteChannel(route, asset.id, asset.channel, event.user, customer, True))
        return True

    async def route_channel(self, asset: AssetConfig, event: ChannelInput, inbox_id: int) -> bool:
        """False when no rule of the asset's service takes the event; it is kept as unrouted."""
        if self.route_channel_now(asset, event, inbox_id):
            return True
        route = self._route(asset)
        if route is None:
            _log.warning(
                "channel_event_unrouted",
                conversation_id=None,  # no rule, so no conversation
                integration=None,
                asset=asset.id,
                service=asset.service,
            )
            await self.finish(inbox_id, "unrouted")
            return False
        # A report belongs to the conversation that sent the message, even a closed one: it
        # must not open a new conversation.
        customer = CustomerEvent(inbox_id, event.event, event.message_id, event.fields)
        sender = await self.store.read(
            lambda conn: outbound_conversation(conn, asset.id, event.user, event.message_id)
        )
        if sender is not None:
            self.core.tell(ToConversation(sender.conversation_id, customer))
            return True
        self.core.tell(RouteChannel(route, asset.id, asset.channel, event.user, customer, False))
        return True

    async def check_bot(
        self, integration_id: str, event: BotInput, *, accepted: bool = False
    ) -> Conversation:
        """The checks that decide the answer. An event `accepted` already (routed again after
        a restart) only needs its conversation: the conversation applies the same rules when
        it processes the event, and tells the bot of a refused reply instead of dropping it."""
        conversation = await self.store.read(
            lambda conn: get_conversation(conn, event.conversation_id)
        )
        if conversation is None:
            raise unknown_conversation(event.conversation_id)
        if conversation.bot != integration_id:
            raise conflict("not_owner", "the conversation belongs to another integration")
        if accepted:
            return conversation
        if conversation.status == "closed":
            raise conflict("conversation_closed", "the conversation is closed")
        if event.kind != "event" and conversation.route == "ccsp":
            raise conflict(
                "conversation_with_agent",
                "an agent holds the conversation; the bot only receives copies until the "
                "agent closes it",
            )
        # A CCSP a reload removed is no CCSP: its handovers would only become dead letters.
        ccsp = conversation.ccsp if self.config.ccsp(conversation.ccsp or "") else None
        if (
            event.kind == "handover"
            and ccsp is None
            and not flows_for_bot_event(
                self.config, conversation.service, integration_id, "handover"
            )
        ):
            raise conflict(
                "no_ccsp",
                "the conversation's rule names no contact center and no handover rule "
                "takes the event",
            )
        return conversation

    def route_bot(
        self, integration_id: str, event: BotInput, conversation: Conversation, inbox_id: int
    ) -> None:
        routed: InboundEvent
        if event.kind == "reply":
            # Intake stores every reply with its Messageid; the inbox id stands in for one
            # stored without it, and is just as stable across restarts.
            message_id = event.message_id or f"inbox-{inbox_id}"
            routed = BotReply(inbox_id, event.fields, message_id, event.extra)
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

    async def check_ccsp(
        self, ccsp_id: str, event: CcspInput, *, accepted: bool = False
    ) -> Conversation:
        session, conversation = await self.store.read(
            lambda conn: session_with_conversation(conn, event.ccsp_conversation_id)
        )
        if session is None or conversation is None:
            raise unknown_conversation(event.ccsp_conversation_id)
        if session["ccsp"] != ccsp_id:
            raise conflict("not_owner", "the conversation belongs to another CCSP")
        if accepted:
            return conversation
        if session["status"] == "abandoned":
            raise conflict(
                "session_abandoned",
                "the Handover for this session was never answered; the bot has the conversation",
            )
        if session["status"] != "open":
            raise conflict("conversation_closed", "the agent session is closed")
        return conversation

    async def check_close_session(
        self, conversation_id: str, *, accepted: bool = False
    ) -> Conversation:
        conversation = await self.store.read(lambda conn: get_conversation(conn, conversation_id))
        if conversation is None:
            raise unknown_conversation(conversation_id)
        if not accepted and conversation.ccsp_conversation_id is None:
            raise conflict("no_agent_session", "no agent session is open in this conversation")
        return conversation

    def route_close_session(self, conversation_id: str, inbox_id: int) -> None:
        self.core.tell(ToConversation(conversation_id, CloseSession(inbox_id)))

    def route_ccsp(self, event: CcspInput, conversation: Conversation, inbox_id: int) -> None:
        routed: InboundEvent
        if event.kind == "message":
            routed = AgentMessage(inbox_id, event.ccsp_conversation_id, event.fields)
        else:
            routed = AgentClose(inbox_id, event.ccsp_conversation_id)
        self.core.tell(ToConversation(conversation.conversation_id, routed))
