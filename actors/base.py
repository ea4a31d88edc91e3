"""What every router actor shares: one bad message is logged and skipped, never fatal."""

from __future__ import annotations

import contextlib
from typing import Any

import pykka
import structlog

from actors.runtime import LoopActor
from router.domain.commands import Ref


class RouterActor(LoopActor):
    """A crashed pykka actor stays dead and every later tell to it fails, so a message that
    raises is logged with its traceback and the actor goes on with the next one."""

    def on_receive(self, message: Any) -> Any:
        try:
            return self.handle(message)
        except Exception:
            structlog.get_logger("router.actor").exception(
                "actor_message_failed", actor=type(self).__name__, message=type(message).__name__
            )
            return None

    def handle(self, message: Any) -> Any:
        """Handle a told message; what it returns answers an ask."""
        raise NotImplementedError


def tell(ref: Ref, message: Any) -> bool:
    """Tell, tolerating an actor that has stopped (at shutdown, or retired); False if it had."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
        return True
    return False
