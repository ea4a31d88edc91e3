"""The operator's actions on one conversation, under /v1/admin/conversations/{id}.

Each goes the way the same request from a peer would: an end of an agent session or a close
is stored before its 202 and routed like the agent's or the bot's own; passivating asks the
directory, which lets the actor go once it is idle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from router.http.inbound import InputError, parse_bot
from router.http.public import ROUTER
from router.http.util import json_response, require_bearer
from router.io.records import get_conversation, insert_inbox

if TYPE_CHECKING:
    from router.daemon import Router
    from router.domain.state import Conversation


def conversation_routes(app: web.Application) -> None:
    app.router.add_post("/v1/admin/conversations/{id}/close-session", close_session)
    app.router.add_post("/v1/admin/conversations/{id}/close", close_conversation)
    app.router.add_post("/v1/admin/conversations/{id}/passivate", passivate)


def _admin(request: web.Request) -> Router:
    router = request.app[ROUTER]
    require_bearer(request, router.admin_tokens())
    return router


async def _conversation(router: Router, conversation_id: str) -> Conversation:
    found = await router.store.read(lambda c: get_conversation(c, conversation_id))
    if found is None:
        raise InputError(404, "unknown_conversation", f"no conversation {conversation_id!r}")
    return found


async def close_session(request: web.Request) -> web.Response:
    """End the agent session a conversation is in, as its agent would; stored before the 202."""
    router = _admin(request)
    conversation_id = request.match_info["id"]
    assert router.intake is not None
    conversation = await router.intake.check_close_session(conversation_id)
    body = {"Event": "Close Session", "Conversationid": conversation_id}
    now = router.clock.now()
    inbox_id, _ = await router.store.write(
        lambda c: insert_inbox(c, "operator", "admin", None, orjson.dumps(body), now)
    )
    router.intake.route_close_session(conversation_id, inbox_id)
    return json_response(
        {"accepted": True, "CCSPConversationid": conversation.ccsp_conversation_id}, status=202
    )


async def close_conversation(request: web.Request) -> web.Response:
    """Close a conversation as its bot's `Close` would, with the same refusals; stored as that
    bot's event, so a restart routes it the same way."""
    router = _admin(request)
    conversation_id = request.match_info["id"]
    found = await _conversation(router, conversation_id)
    if found.bot is None:
        raise InputError(409, "no_bot", "a conversation with a flow has no bot to close it")
    body = {"Event": "Close", "conversation_id": conversation_id}
    event = parse_bot(body)
    assert router.intake is not None
    conversation = await router.intake.check_bot(found.bot, event)
    now = router.clock.now()
    bot = found.bot
    inbox_id, _ = await router.store.write(
        lambda c: insert_inbox(c, "bot", bot, None, orjson.dumps(body), now)
    )
    router.intake.route_bot(bot, event, conversation, inbox_id)
    return json_response({"accepted": True, "Conversationid": conversation_id}, status=202)


async def passivate(request: web.Request) -> web.Response:
    """Let the conversation's actor leave memory; its next event loads it again. `200` when
    it has gone (or was not resident), `202` when it goes once its attempt out is answered or
    its mail is handled."""
    router = _admin(request)
    conversation_id = request.match_info["id"]
    await _conversation(router, conversation_id)
    outcome = await router.passivate(conversation_id)
    gone = outcome == "passivated"
    return json_response(
        {"Conversationid": conversation_id, "passivated": gone}, status=200 if gone else 202
    )
