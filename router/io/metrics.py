"""Prometheus metrics, one registry per daemon so that several can run in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inbound = Counter(
            "router_inbound_events_total",
            "Events received, by source and result",
            ["source", "result"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "router_delivery_attempts_total",
            "Delivery attempts, by destination kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "router_http_errors_total",
            "Requests answered with an error, by status",
            ["status"],
            registry=self.registry,
        )
        self.live_conversations = Gauge(
            "router_live_conversation_actors",
            "Conversation actors running now",
            registry=self.registry,
        )
