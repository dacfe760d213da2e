"""Prometheus metrics (prometheus_client).

Label sets are bounded: ``topic`` is the configured topic *name*, so every
instance of a templated topic (``/orders/{order_id}``) counts under one label.
Nothing is observed per subscriber per event: deliveries and bytes are counted
once per publish (events × subscribers), lag and drops once per write.

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (the
supervisor does) and ``/metrics`` on any worker reports the sum over all of
them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["OFF", "Counter", "Gauge", "Metrics", "Off"]


class Off:
    """Stands in for a metric where none is wired (unit tests, tools)."""

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


OFF = Off()

LAG_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "sse_gateway_connections",
            "Open event streams",
            ["protocol"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.subscribers = Gauge(
            "sse_gateway_subscribers",
            "Streams subscribed to a topic (a multiplexed stream counts once per topic)",
            ["topic"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.events_in = Counter(
            "sse_gateway_events_in", "Events received from upstreams", ["topic"], registry=r
        )
        self.deliveries = Counter(
            "sse_gateway_deliveries",
            "Events queued for clients (events x subscribers)",
            ["topic"],
            registry=r,
        )
        self.bytes_out = Counter(
            "sse_gateway_bytes_out", "Bytes written to clients", ["protocol"], registry=r
        )
        self.resumes = Counter(
            "sse_gateway_resumes",
            "Streams opened, by how their cursor resolved",
            ["outcome"],  # fresh, replayed, gap_unknown, gap_expired, gap_foreign, gap_malformed
            registry=r,
        )
        self.replayed_events = Counter(
            "sse_gateway_replayed_events", "Events sent from replay rings", registry=r
        )
        self.dropped = Counter(
            "sse_gateway_dropped_events",
            "Events dropped from slow clients' queues (drop_oldest, latest)",
            registry=r,
        )
        self.streams_closed = Counter(
            "sse_gateway_streams_closed",
            "Streams ended, by reason (slow_consumer, send_timeout, client_gone, ...)",
            ["reason"],
            registry=r,
        )
        self.upstream_instances = Gauge(
            "sse_gateway_upstream_instances",
            "Topic instances by upstream connection state",
            ["topic", "state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_failures = Counter(
            "sse_gateway_upstream_failures",
            "Upstream connections that failed or ended, by reason (each is retried)",
            ["topic", "reason"],
            registry=r,
        )
        self.upstream_discarded = Counter(
            "sse_gateway_upstream_discarded",
            "Upstream events discarded for exceeding the size bounds",
            ["topic"],
            registry=r,
        )
        self.lag = Histogram(
            "sse_gateway_delivery_lag_seconds",
            "From receiving an event from upstream to writing it to a client",
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        self.auth_failures = Counter(
            "sse_gateway_auth_failures", "Refused credentials, by reason", ["reason"], registry=r
        )
        self.limits_hit = Counter(
            "sse_gateway_limits_hit", "Requests refused by a limit", ["limit"], registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
