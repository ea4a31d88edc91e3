"""What every router actor shares: one bad message is logged and skipped, never fatal."""

from __future__ import annotations

import contextlib
from typing import Any

import pykka
import structlog

from actors.runtime import LoopActor
from router.domain.commands import Ref

_log = structlog.get_logger("router.actor")


class RouterActor(LoopActor):
    """A crashed pykka actor stays dead and every later tell to it fails, so a message that
    raises is logged with its traceback and the actor goes on with the next one."""

    def on_receive(self, message: Any) -> Any:
        try:
            return self.handle(message)
        except Exception:
            _log.exception(
                "actor_message_failed",
                **self.about(),
                actor=type(self).__name__,
                message=type(message).__name__,
            )
            return None

    def handle(self, message: Any) -> Any:
        """Handle a told message; what it returns answers an ask."""
        raise NotImplementedError

    def about(self) -> dict[str, Any]:
        """What each of this actor's log lines says it is about: for a conversation, its ID,
        integration and asset."""
        return {}


def conversation_fields(
    conversation_id: str | None, integration: str | None, asset: str | None
) -> dict[str, str | None]:
    """What every log line about a conversation carries: its ID, its bot (the integration,
    or null) and its channel asset; null where the line cannot know."""
    return {"conversation_id": conversation_id, "integration": integration, "asset": asset}


def tell(ref: Ref, message: Any) -> bool:
    """Tell, tolerating an actor that has stopped (at shutdown, or retired); False if it had."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
        return True
    return False
