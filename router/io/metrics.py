"""Prometheus metrics, one registry per daemon so that several can run in one process.

Counters and histograms are counted where the event happens: intake in the HTTP doors,
attempts at the edge, retries, parkings and dead letters in the conversation that decides
them, restarts and passivations in the directory, commits where the store hears of them (the
loop, or its writer thread: prometheus_client is thread-safe). What is a state rather than
an event (actors resident, mailboxes, integration states) is read when scraped, from a
`LiveView` the daemon supplies, so nothing on the hot path keeps a gauge up to date.

Labels take few values: sources, channels, destination kinds, outcomes, reasons, integration
ids, states. Never a user or a conversation id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

# An attempt: from leaving for its destination to a complete answer, or the timeout.
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A group commit, fsync included.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Family(Generic[M]):
    """A labelled metric whose children are made once each: `.labels()` checks its arguments
    and takes a lock on every call, too much to pay once per message."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


@dataclass(frozen=True)
class IntegrationHealth:
    state: str  # "active" | "inactive"
    consecutive_failures: int
    parked_conversations: int


@dataclass(frozen=True)
class LiveView:
    """What the actors hold at the moment of a scrape, read on their loop."""

    conversations: Mapping[str, int]  # resident, loading, retiring, restarting -> actors
    integrations: Mapping[str, IntegrationHealth] = field(default_factory=dict)  # by bot id
    mailboxes: Mapping[str, int] = field(default_factory=dict)  # actor kind -> messages waiting


INTEGRATION_STATES = ("active", "inactive")


class LiveCollector:
    """Gauges computed at scrape time from `view`, which the daemon sets once its actors run;
    until then (and once they stop) the families are absent rather than stale."""

    def __init__(self) -> None:
        self.view: Callable[[], LiveView | None] = lambda: None

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        view = self.view()
        if view is not None:
            yield from self._families(view)

    @staticmethod
    def _families(view: LiveView | None) -> Iterator[Metric]:
        actors = GaugeMetricFamily(
            "router_conversation_actors",
            "Conversation actors by state: resident (running), loading from the store, "
            "retiring (passivating), restarting after a crash",
            labels=["state"],
        )
        state = GaugeMetricFamily(
            "router_integration_state",
            "1 for the state each bot integration is in, 0 for the others",
            labels=["integration", "state"],
        )
        failures = GaugeMetricFamily(
            "router_integration_consecutive_failures",
            "Failed attempts in a row to each bot integration",
            labels=["integration"],
        )
        parked = GaugeMetricFamily(
            "router_integration_parked_conversations",
            "Conversations with deliveries parked while their bot is inactive",
            labels=["integration"],
        )
        mailboxes = GaugeMetricFamily(
            "router_mailbox_depth",
            "Messages waiting in actors' inboxes, by kind of actor",
            labels=["actor"],
        )
        if view is not None:
            for name, count in view.conversations.items():
                actors.add_metric([name], count)
            for integration, health in view.integrations.items():
                for value in INTEGRATION_STATES:
                    state.add_metric([integration, value], float(health.state == value))
                failures.add_metric([integration], health.consecutive_failures)
                parked.add_metric([integration], health.parked_conversations)
            for kind, depth in view.mailboxes.items():
                mailboxes.add_metric([kind], depth)
        yield from (actors, state, failures, parked, mailboxes)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # -- intake and the HTTP doors
        self.inbound = Family(
            Counter(
                "router_inbound_events_total",
                "Events received on the public port, by source (channel, bot, ccsp), the "
                "channel they belong to, and result (accepted, duplicate, unrouted, or the "
                "error code they were refused with)",
                ["source", "channel", "result"],
                registry=r,
            )
        )
        self.errors = Family(
            Counter(
                "router_http_errors_total",
                "Requests answered with an error, by status",
                ["status"],
                registry=r,
            )
        )
        self.connections_closed = Family(
            Counter(
                "router_http_connections_closed_total",
                "Connections the daemon refused or cut short, by port (public, debug) and "
                "reason: max_connections, max_connections_per_address, header_timeout, "
                "body_timeout, headers_too_large, tls_handshake",
                ["port", "reason"],
                registry=r,
            )
        )
        # -- deliveries
        self.attempts = Family(
            Counter(
                "router_delivery_attempts_total",
                "Delivery attempts, by destination kind and outcome (ok, http_error, "
                "timeout, error)",
                ["kind", "outcome"],
                registry=r,
            )
        )
        self.attempt_seconds = Family(
            Histogram(
                "router_delivery_attempt_duration_seconds",
                "Time from an attempt leaving to its answer, by destination kind and outcome",
                ["kind", "outcome"],
                buckets=ATTEMPT_BUCKETS,
                registry=r,
            )
        )
        self.retries = Family(
            Counter(
                "router_delivery_retries_total",
                "Failed attempts given a retry on the schedule, by destination kind",
                ["kind"],
                registry=r,
            )
        )
        self.parked = Family(
            Counter(
                "router_deliveries_parked_total",
                "Deliveries parked because their bot integration was inactive",
                ["integration"],
                registry=r,
            )
        )
        self.dead_letters = Family(
            Counter(
                "router_dead_letters_total",
                "Deliveries that became dead letters, by destination kind and reason "
                "(retries_exhausted, expired, session_abandoned)",
                ["kind", "reason"],
                registry=r,
            )
        )
        # -- conversation actors
        self.activations = Family(
            Counter(
                "router_conversation_activations_total",
                "Conversation actors started, by origin: a new conversation, or one read "
                "back from the store",
                ["origin"],
                registry=r,
            )
        )
        self.passivations = Counter(
            "router_conversation_passivations_total",
            "Idle conversation actors that left memory; they resume from the store",
            registry=r,
        )
        self.restarts = Family(
            Counter(
                "router_conversation_restarts_total",
                "Conversation actors restarted after a crash, by their bot integration "
                '("" for conversations with none)',
                ["integration"],
                registry=r,
            )
        )
        self.poisoned = Family(
            Counter(
                "router_poisoned_events_total",
                "Events set aside past the restart intensity, by the conversation's bot "
                'integration ("" for conversations with none)',
                ["integration"],
                registry=r,
            )
        )
        # -- the store
        self.commit_seconds = Histogram(
            "router_store_commit_duration_seconds",
            "One group commit from its start, fsync included",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "router_store_commit_batch_size",
            "Writes committed together in one transaction",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.store_failures = Family(
            Counter(
                "router_store_failures_total",
                "Writes (and reads) the store could not carry out, by reason: full, io, "
                "readonly, locked, corrupt, replaced (the file was deleted or replaced under "
                "the daemon), constraint, error",
                ["reason"],
                registry=r,
            )
        )
        self.store_failing = Gauge(
            "router_store_failing",
            "1 while the store cannot commit: intake answers 503 until a commit succeeds",
            registry=r,
        )
        self.live = LiveCollector()
        r.register(self.live)
