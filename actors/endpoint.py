"""An endpoint actor guards one destination: it counts failures and, for a bot, parks
deliveries while the integration is out of service and releases them once it is verified."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog

from actors.base import RouterActor, tell
from actors.messages import Dispatch, Inspect, Reconfigure, Supervised
from router.domain.commands import ToConversation, Verified
from router.domain.endpoint_state import EndpointState, on_attempt, on_verified
from router.domain.events import DeliveryOutcome, Release
from router.io.effects import Attempt, AttemptResult, Edge, Persist
from router.io.records import SaveIntegrationState


class EndpointActor(RouterActor):
    def __init__(self, state: EndpointState, edge: Edge, threshold: int) -> None:
        super().__init__()
        self.state = state
        self.edge = edge
        self.threshold = threshold
        # Conversations with deliveries parked here, in parking order. Released through the
        # core by id: a parked conversation's actor may have retired meanwhile.
        self.parked: dict[str, None] = {}
        # Its conversations' supervision since the daemon started: restarts after a crash,
        # and events set aside as poisoned past the restart intensity.
        self.supervised = {"restarted": 0, "poisoned": 0}
        self.in_flight = 0  # attempts handed to the edge and not yet answered
        self.last_error: str | None = None  # of the last failed attempt
        self.log = structlog.get_logger("router.endpoint").bind(dest=state.dest.key)

    def handle(self, message: Any) -> Any:
        match message:
            case Supervised(outcome=outcome):
                self.supervised[outcome] = self.supervised.get(outcome, 0) + 1
            case Inspect():
                return {
                    "restarts": self.supervised["restarted"],
                    "poisoned_events": self.supervised["poisoned"],
                    "parked_conversations": len(self.parked),
                }
            case Dispatch(delivery=delivery, conversation=conversation):
                if self.state.inactive:
                    self.parked[delivery.conversation_id] = None
                    tell(
                        conversation,
                        DeliveryOutcome(
                            delivery.delivery_id,
                            delivery.dest.key,
                            ok=False,
                            attempted=False,
                            error="integration inactive",
                            inactive=True,
                        ),
                    )
                    return
                self.in_flight += 1
                self.edge.submit(
                    Attempt(
                        delivery,
                        self.state.url,
                        self.state.access_token,
                        reply_to=self.actor_ref,
                        conversation=conversation,
                        integration=message.integration,
                        asset=message.asset,
                        signing_secret=self.state.signing_secret,
                    )
                )
            case AttemptResult(delivery=delivery, conversation=conversation, ok=ok, error=error):
                self.in_flight -= 1
                if not ok:
                    self.last_error = error
                self._count(ok, message.throttled)
                if not ok and self.state.inactive:
                    self.parked[delivery.conversation_id] = None
                tell(
                    conversation,
                    DeliveryOutcome(
                        delivery.delivery_id,
                        delivery.dest.key,
                        ok=ok,
                        attempted=True,
                        error=error,
                        inactive=self.state.inactive,
                        retry_after=message.retry_after,
                    ),
                )
            case Verified(core=core):
                self._set(on_verified(self.state))
                self.log.info("integration_reactivated", released=len(self.parked))
                parked, self.parked = self.parked, {}
                for conversation_id in parked:
                    tell(core, ToConversation(conversation_id, Release(self.state.dest.key)))
            case Reconfigure(url=url, access_token=token, signing_secret=secret):
                self.state = replace(self.state, url=url, access_token=token, signing_secret=secret)
        return None

    def _count(self, ok: bool, throttled: bool = False) -> None:
        before = self.state
        self._set(on_attempt(before, ok=ok, threshold=self.threshold, throttled=throttled))
        if self.state.inactive and not before.inactive:
            self.log.warning(
                "integration_inactive", consecutive_failures=self.state.consecutive_failures
            )

    def _set(self, new: EndpointState) -> None:
        old, self.state = self.state, new
        if self.state.dest.kind == "bot" and (old.state, old.consecutive_failures) != (
            new.state,
            new.consecutive_failures,
        ):
            self.edge.submit(
                Persist((SaveIntegrationState(new.dest.id, new.state, new.consecutive_failures),))
            )
