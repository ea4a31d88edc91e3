"""The daemon: its parts started in order and stopped in reverse.

HTTP doors hold this object and talk to the actors only by `tell`; the actors reach the
outside only through the edge.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pykka
import structlog
from aiohttp import web

from actors.conversation import ConversationDeps
from actors.core import CoreActor
from actors.endpoint import EndpointActor
from actors.journal import Journal
from actors.messages import Inspect, Passivate, Reconfigure, Restore
from actors.observe import (
    HandledRate,
    Residents,
    conversation_live,
    endpoint_live,
    live_view,
    residents_by_bot,
    runtime_view,
)
from actors.on_disk import KeysOnDisk
from actors.runtime import LoopActorRef
from router.config.settings import Config, check_references
from router.domain.commands import ToConversation
from router.domain.endpoint_state import EndpointState, destination_states
from router.domain.events import ConversationEvent, HandoverDeadline, SessionIdle
from router.domain.model import Delivery, Destination
from router.domain.supervision import RestartPolicy
from router.http.admin import admin_routes
from router.http.admission import guard_expectations
from router.http.connections import load_tls
from router.http.debug import debug_app
from router.http.errors import JsonErrorRunner
from router.http.inbound import InputError, parse_bot, parse_ccsp, parse_channel
from router.http.intake import Intake
from router.http.lean import LeanChannelEvents
from router.http.listen import Listener, debug_port, listen, public_port, runner_options
from router.http.public import ADMISSION, RATES, public_app
from router.http.quiet import AcceptErrors
from router.http.store_gate import StoreGate
from router.http.util import webhook_url
from router.io.clock import Clock, SystemClock
from router.io.edge import IoEdge
from router.io.effects import TellAt
from router.io.fd_limit import raise_open_file_limit
from router.io.ids import Sequence, new_id, new_token
from router.io.integrations import Integration, Integrations
from router.io.metrics import Metrics
from router.io.records import (
    get_conversation,
    integration_rows,
    live_deliveries,
    max_delivery_id,
    open_keys,
    open_sessions,
    pending_inbox,
    webhook_token,
)
from router.io.store import Store
from router.recovery import StoreWatch
from router.reload import reload_config
from router.retention import RetentionSweep
from router.retention import erase_customer as erase_customer_data
from router.rotation import SecretRotation


class StartError(Exception):
    """The daemon cannot start; the message says why."""


class Router:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self.store = Store(config.store_path, self.metrics, self.clock.now)
        self.edge = IoEdge(
            self.store,
            self.clock,
            config.delivery.timeout_s,
            self.metrics,
            max_answer_bytes=config.delivery.max_answer_bytes,
            attempts_per_destination=config.delivery.max_attempts_per_destination,
        )
        self.integrations = Integrations(self.store)
        self.ccsp_tokens: dict[str, str] = {}
        # Shared with every conversation actor, and changed in place by a reload.
        self.session_idle_timeouts: dict[str, float] = {}
        self.endpoints: dict[str, LoopActorRef[EndpointActor]] = {}
        self._core: LoopActorRef[CoreActor] | None = None
        self.intake: Intake | None = None
        self.public_url = config.server.public_url or ""
        self.public_runner: web.AppRunner | None = None
        self.debug_runner: web.AppRunner | None = None
        self.accept_errors: AcceptErrors | None = None
        self.listeners: dict[str, Listener] = {}  # by port name: their caps, for views
        self.public_port = 0
        self.debug_port = 0
        self.stopped = False
        self.journal = Journal()
        self._handled_rate = HandledRate()
        self.reloading = asyncio.Lock()  # one reload (or recovery) at a time
        # While the store cannot commit: intake answers 503, and the watch resumes routing.
        self.store_gate = StoreGate(self.store.health)
        self.watch = StoreWatch(self)
        self.retention = RetentionSweep(self)
        self.rotation = SecretRotation(self)
        self.edge.retired = self.rotation.retired
        self.log = structlog.get_logger("router.daemon")

    @property
    def core(self) -> LoopActorRef[CoreActor]:
        """The directory of conversations; there is none before the actors start."""
        if self._core is None:
            raise RuntimeError("the router's actors have not started")
        return self._core

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        started: list[str] = []
        try:
            self.start_store()
            started.append("store")
            await self.edge.start()
            started.append("edge")
            await self.load_integrations()
            self.start_actors(await self.keys_on_disk())
            started.append("actors")
            await self.restore()
            started.append("http")  # whichever listener did start is closed on failure
            await self.start_http()
            self.watch.start()
            self.retention.start()
        except BaseException:
            await self._stop(started)
            raise
        self.log.info(
            "router_started",
            public=self.public_url,
            debug_port=self.debug_port,
            store=str(self.config.store_path),
        )

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self._stop(["store", "edge", "actors", "http"])
        self.log.info("router_stopped")

    async def _stop(self, started: list[str]) -> None:
        await self.watch.stop()  # no recovery starts actors while they are being stopped
        await self.retention.stop()
        if "http" in started:
            await self.stop_http()
        if "actors" in started:
            await self.stop_actors()
        if "edge" in started:
            await self.edge.stop()
        if "store" in started:
            await self.store.drain()
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    def start_store(self) -> None:
        try:
            self.store.open()
        except (OSError, sqlite3.Error) as exc:
            raise StartError(f"cannot open the store at {self.config.store_path}: {exc}") from exc

    async def load_integrations(self) -> None:
        # Delivery ids are this store's; the prefix tells its webhook-ids from another's.
        self.edge.id_prefix = await self.store.write(
            partial(
                webhook_token,
                kind="store",
                item_id="webhook-id-prefix",
                proposed=f"{new_id()[:8]}_",
                pinned=False,
            )
        )
        await self.integrations.load(self.config.integrations)
        check_references(self.config, set(self.integrations.items))
        for ccsp in self.config.ccsps:
            pinned = ccsp.webhook_token is not None
            proposed = ccsp.webhook_token or new_token()
            self.ccsp_tokens[ccsp.id] = await self.store.write(
                partial(
                    webhook_token, kind="ccsp", item_id=ccsp.id, proposed=proposed, pinned=pinned
                )
            )
        await self.rotation.load()

    async def keys_on_disk(self) -> KeysOnDisk:
        """The directory's filter, read and built on a thread of its own: a recovery builds
        it afresh while the loop goes on answering health checks and the debug port."""
        return await self.store.read_aside(keys_on_disk)

    def start_actors(self, on_disk: KeysOnDisk) -> None:
        threshold = self.config.delivery.inactive_after_failures
        health = self.store.read_now(
            lambda conn: {
                r["id"]: (r["state"], r["consecutive_failures"]) for r in integration_rows(conn)
            }
        )
        for integration in self.integrations.items.values():
            self.add_endpoint(integration, *health.get(integration.id, ("active", 0)))
        for state in destination_states(self.config):
            self.endpoints[state.dest.key] = EndpointActor.start(state, self.edge, threshold)
        self.session_idle_timeouts.update(
            {c.id: c.session_idle_timeout_s for c in self.config.ccsps}
        )
        sequence = Sequence(self.store.read_now(max_delivery_id))

        def deps(core: Any) -> ConversationDeps:
            return ConversationDeps(
                edge=self.edge,
                core=core,
                endpoints=self.endpoints,
                clock=self.clock,
                delays=self.config.delivery.retry_delays_s,
                next_delivery_id=sequence,
                new_id=new_id,
                handover_deadline=self.config.delivery.handover_deadline_s,
                session_idle_timeouts=self.session_idle_timeouts,
                max_parked_age=self.config.delivery.max_parked_age_s,
                metrics=self.metrics,
                journal=self.journal,
            )

        conversations = self.config.conversations
        self._core = CoreActor.start(
            deps,
            self.edge,
            conversations.max_live,
            RestartPolicy(
                conversations.max_restarts,
                conversations.restart_window_s,
                conversations.restart_backoff_s,
            ),
            on_disk,
        )
        self.intake = Intake(self.config, self.store, self.core)
        self.metrics.live.view = lambda: live_view(self._core, self.endpoints)

    def add_endpoint(
        self, integration: Integration, state: str = "active", failures: int = 0
    ) -> None:
        endpoint_state = EndpointState(
            Destination("bot", integration.id),
            integration.url,
            integration.access_token,
            "inactive" if state == "inactive" else "active",
            failures,
            integration.signing_secret,
        )
        self.endpoints[endpoint_state.dest.key] = EndpointActor.start(
            endpoint_state, self.edge, self.config.delivery.inactive_after_failures
        )

    def start_endpoint(self, state: EndpointState) -> None:
        """A CCSP, flow or channel asset added by a reload."""
        self.endpoints[state.dest.key] = EndpointActor.start(
            state, self.edge, self.config.delivery.inactive_after_failures
        )

    def reconfigure_endpoint(self, integration: Integration) -> None:
        endpoint = self.endpoints.get(f"bot:{integration.id}")
        if endpoint is not None:
            endpoint.tell(
                Reconfigure(integration.url, integration.access_token, integration.signing_secret)
            )

    def remove_endpoint(self, integration_id: str, kind: str = "bot") -> None:
        ref = self.endpoints.pop(f"{kind}:{integration_id}", None)
        if ref is not None:
            ref.stop(block=False)

    async def reload(self, path: str | Path) -> bool:
        """Read the config file again and apply it, or keep the running one (`SIGHUP`);
        True when applied. See `router.reload`."""
        return await reload_config(self, path)

    async def stop_actors(self) -> None:
        # Timers first, then conversations (through the core), then the endpoints they send
        # to: a conversation never finds its endpoint gone while it is still running.
        self.edge.quiesce()
        core, endpoints = self._core, list(self.endpoints.values())
        if core is not None:
            await core.stop(block=False)
        for ref in endpoints:
            await ref.stop(block=False)
        self._core = None
        self.endpoints.clear()

    async def restore(self) -> None:
        """Resume every owed delivery, then route what was stored but never routed."""
        deliveries = self.store.read_now(live_deliveries)
        grouped: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in deliveries:
            grouped[delivery.conversation_id].append(delivery)
        for conversation_id, items in grouped.items():
            conversation = self.store.read_now(
                partial(get_conversation, conversation_id=conversation_id)
            )
            if conversation is None:
                self.log.error(
                    "orphan_deliveries",
                    conversation_id=conversation_id,
                    integration=None,  # the conversation is gone: nothing more is known
                    asset=None,
                )
                continue
            self.core.tell(Restore(conversation, tuple(items)))
        self.arm_session_timers()
        rows = self.store.read_now(pending_inbox)
        for row in rows:
            await self.replay_inbox(
                row["inbox_id"], row["source"], row["source_id"], orjson.loads(row["body"])
            )
        if grouped or rows:
            self.log.info("router_restored", conversations=len(grouped), inbox=len(rows))

    def arm_session_timers(self) -> None:
        """Timers live on the loop, so a start re-arms the deadline and idle check of every
        agent session still open; one that fell due while the daemon was down fires at once."""
        idle = self.session_idle_timeouts
        for conversation in self.store.read_now(open_sessions):
            ccsp_id = conversation.ccsp_conversation_id
            if ccsp_id is None:
                continue
            cid = conversation.conversation_id
            timers: list[tuple[float, ConversationEvent]] = []
            if conversation.handover_deadline_at is not None:
                timers.append((conversation.handover_deadline_at, HandoverDeadline(ccsp_id)))
            used = conversation.session_used_at or conversation.created_at
            timers.append(
                (used + idle.get(conversation.ccsp or "", 86_400.0), SessionIdle(ccsp_id))
            )
            for at, event in timers:
                self.edge.submit(TellAt(at, self.core, ToConversation(cid, event)))

    async def replay_inbox(self, inbox_id: int, source: str, source_id: str, body: Any) -> None:
        assert self.intake is not None
        try:
            if source == "channel":
                asset = self.config.asset(source_id)
                if asset is None:
                    raise InputError(404, "unknown_asset", source_id)
                await self.intake.route_channel(asset, parse_channel(body), inbox_id)
            elif source == "operator":
                conversation_id = str(body["Conversationid"])
                await self.intake.check_close_session(conversation_id, accepted=True)
                self.intake.route_close_session(conversation_id, inbox_id)
            elif source == "bot":
                bot_event = parse_bot(body)
                conversation = await self.intake.check_bot(source_id, bot_event, accepted=True)
                self.intake.route_bot(source_id, bot_event, conversation, inbox_id)
            else:
                ccsp_event = parse_ccsp(body)
                conversation = await self.intake.check_ccsp(source_id, ccsp_event, accepted=True)
                self.intake.route_ccsp(ccsp_event, conversation, inbox_id)
        except InputError as exc:
            self.log.warning("inbox_replay_rejected", inbox_id=inbox_id, error=exc.message)
            await self.intake.finish(inbox_id, "rejected")

    async def start_http(self) -> None:
        """Both ports behind the connection guard (`router.http.listen`); the public port
        over HTTPS when `server.tls_cert` and `tls_key` are set."""
        server = self.config.server
        public = public_app(self)
        admin_routes(public)
        guard_expectations(public, public[ADMISSION].expect)
        tls = None
        if server.tls_cert is not None and server.tls_key is not None:
            try:
                tls = load_tls(server.tls_cert, server.tls_key)
            except OSError as exc:  # ssl.SSLError included
                raise StartError(f"cannot load server.tls_cert and tls_key: {exc}") from exc
        self.accept_errors = AcceptErrors(asyncio.get_running_loop())
        self.accept_errors.install()

        def count(port: str, reason: str) -> None:
            self.metrics.connections_closed(port, reason).inc()

        self.public_runner = JsonErrorRunner(
            public,
            on_error=lambda s: self.metrics.errors(str(s)).inc(),
            access_log=None,
            handle_signals=False,
            **runner_options(),
        )
        port = public_port(server, raise_open_file_limit(), tls)

        def lean() -> LeanChannelEvents:
            return LeanChannelEvents(
                self,
                public[ADMISSION],
                public[RATES],
                server.max_header_bytes,
                lambda s: self.metrics.errors(str(s)).inc(),
            )

        try:
            self.listeners["public"] = await listen(self.public_runner, port, count, lean)
        except OSError as exc:
            raise StartError(
                f"cannot listen on {server.host}:{server.port}: {exc.strerror}"
            ) from exc
        self.public_port = _bound_port(self.public_runner)
        if not self.public_url:
            scheme = "http" if tls is None else "https"
            self.public_url = f"{scheme}://{server.host}:{self.public_port}"
        debug = self.config.debug
        self.debug_runner = JsonErrorRunner(
            debug_app(self), access_log=None, handle_signals=False, **runner_options()
        )
        try:
            self.listeners["debug"] = await listen(
                self.debug_runner, debug_port(debug, server), count
            )
        except OSError as exc:
            raise StartError(f"cannot listen on {debug.host}:{debug.port}: {exc.strerror}") from exc
        self.debug_port = _bound_port(self.debug_runner)

    async def stop_http(self) -> None:
        """New requests are refused (`503 stopping`) while those under way get up to
        `server.stop_grace_s` to finish; then both ports close."""
        if self.public_runner is not None:
            admission = self.public_runner.app[ADMISSION]
            if not await admission.drain(self.config.server.stop_grace_s):
                self.log.warning("stop_grace_over", requests_cut_short=admission.in_flight)
        for runner in (self.debug_runner, self.public_runner):
            if runner is not None:
                await runner.cleanup()
        self.public_runner = self.debug_runner = None
        self.listeners.clear()
        if self.accept_errors is not None:
            self.accept_errors.uninstall()
            self.accept_errors = None

    # -- views ---------------------------------------------------------------------------

    def admin_tokens(self) -> tuple[str, ...]:
        return self.rotation.accepted("admin", "", self.config.admin_token)

    def bot_webhook_url(self, integration: Integration) -> str:
        return webhook_url(self.public_url, "bots", integration.id, integration.webhook_token)

    def ccsp_webhook_url(self, ccsp_id: str) -> str:
        return webhook_url(self.public_url, "ccsp", ccsp_id, self.ccsp_tokens[ccsp_id])

    async def inspect(self, name: str) -> dict[str, Any]:
        """An actor's live view (`core`, or an endpoint's key), asked on the loop; empty when
        it is not running."""
        ref: LoopActorRef[Any] | None = self._core if name == "core" else self.endpoints.get(name)
        if ref is None:
            return {}
        try:
            view: dict[str, Any] = await ref.ask(Inspect(), block=False)
        except pykka.ActorDeadError:
            return {}
        return view

    def runtime_view(self) -> dict[str, Any]:
        """Read on the loop, between the actors' turns: a snapshot that asks no actor."""
        return runtime_view(self._core, self.endpoints, self._handled_rate)

    def integrations_live(self) -> dict[str, dict[str, Any]]:
        """Every bot's supervisor, with one pass over the resident conversations for all."""
        residents = residents_by_bot(self._core)
        return {
            key.removeprefix("bot:"): endpoint_live(ref, residents.get(key[4:], Residents()))
            for key, ref in list(self.endpoints.items())
            if key.startswith("bot:")
        }

    def conversation_live(self, conversation_id: str) -> dict[str, Any] | None:
        return conversation_live(self._core, conversation_id, self.journal)

    async def passivate(self, conversation_id: str) -> str:
        """`passivated` (it left memory, or was not in it) or `when_idle` (an attempt is
        out or mail waits: it leaves once idle)."""
        if self._core is None:
            return "passivated"
        answer: str = await self._core.ask(Passivate(conversation_id), block=False)
        return answer

    async def erase_customer(self, asset: str, user: str, events: tuple[str, ...]) -> Counter[str]:
        """Everything kept about one user of an asset (`router.retention`)."""
        return await erase_customer_data(self, asset, user, events)

    def integration_view(self, integration: Integration, health: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": integration.id,
            "name": integration.name,
            "url": integration.url,
            "state": health.get("state", "active"),
            "webhook_url": self.bot_webhook_url(integration),
            "consecutive_failures": health.get("consecutive_failures", 0),
        }


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return 0


def keys_on_disk(conn: sqlite3.Connection) -> KeysOnDisk:
    """The open conversations' identities, for the directory's filter."""
    count, keys = open_keys(conn)
    return KeysOnDisk.of(keys, count)
