"""The metric catalogue: every Prometheus metric the API exports, with its unit.

Each ``create_app`` gets its own ``CollectorRegistry`` so that several apps
(tests, the embedded mode) never collide on global state. With several
server worker processes each worker exports its own numbers; scrape each
worker or run one worker per container (the deploy files do the latter).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.events import EVENT_TYPES


class ApiMetrics:
    """Holds the collectors; pass it to whatever records into them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingest_events = Counter(
            "viraltrace_ingest_events_total",
            "Events received at the edge, by event type and outcome "
            "(accepted, rejected, rate_limited, unavailable, dropped).",
            ["type", "outcome"],
            registry=r,
        )
        self.dlq_events = Counter(
            "viraltrace_dlq_events_total",
            "Events routed to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_dropped = Counter(
            "viraltrace_publish_dropped_records_total",
            "Fire-and-forget records that could not be stored (spool full), by topic.",
            ["topic"],
            registry=r,
        )
        self.spool_depth = Gauge(
            "viraltrace_spool_depth_records",
            "Records waiting in the on-disk spool for the broker.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "viraltrace_spool_depth_bytes",
            "Bytes of records waiting in the on-disk spool.",
            registry=r,
        )
        self.spooled = Counter(
            "viraltrace_spooled_records_total",
            "Records written to the spool because the broker was unreachable.",
            registry=r,
        )
        self.replayed = Counter(
            "viraltrace_spool_replayed_records_total",
            "Records replayed from the spool to the broker.",
            registry=r,
        )
        self.broker_up = Gauge(
            "viraltrace_broker_up",
            "1 while the producer reaches the broker, else 0.",
            registry=r,
        )
        self.send_seconds = Histogram(
            "viraltrace_producer_send_seconds",
            "Time from handing a batch to the producer to its acks (acks=all), in seconds.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        # Label children bound once: .labels() costs more than .inc() on the pixel path.
        self._ingest: dict[tuple[str, str], Any] = {}
        self._dlq: dict[str, Any] = {}

    def count_ingest(self, event_type: str, outcome: str, amount: int = 1) -> None:
        """Counts edge events. Unknown types count as ``invalid`` so that a client
        cannot mint label values (and blow up the series count)."""
        if event_type not in EVENT_TYPES:
            event_type = "invalid"
        key = (event_type, outcome)
        child = self._ingest.get(key)
        if child is None:
            child = self._ingest[key] = self.ingest_events.labels(event_type, outcome)
        child.inc(amount)

    def count_dlq(self, reason: str) -> None:
        """Counts a dead-lettered event; reasons come from our code, so the set is bounded."""
        child = self._dlq.get(reason)
        if child is None:
            child = self._dlq[reason] = self.dlq_events.labels(reason)
        child.inc()


class WebhookMetrics:
    """The webhook notifier's part of the catalogue (``consumers/notifier``).

    - ``viraltrace_webhook_attempts_total{outcome}``: delivery attempts by outcome:
      delivered (2xx), gone (410), http_error (another status), timeout,
      network_error, refused (the SSRF guard), invalid (cannot be signed or sent).
    - ``viraltrace_webhook_delivery_seconds``: one attempt, from sending to the
      first 500 characters of the answer, in seconds (histogram).
    - ``viraltrace_webhook_deliveries_total{state}``: deliveries that reached
      delivered, failed or dead.
    - ``viraltrace_webhook_endpoints_disabled_total``: endpoints disabled because
      the receiver answered 410 Gone.
    - ``viraltrace_webhook_pending_deliveries``: deliveries waiting in the outbox,
      as of the notifier's last count (gauge, deliveries).
    """

    OUTCOMES = (
        "delivered",
        "gone",
        "http_error",
        "timeout",
        "network_error",
        "refused",
        "invalid",
    )

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY

        r = registry or REGISTRY
        self.attempts = Counter(
            "viraltrace_webhook_attempts_total",
            "Webhook delivery attempts, by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in self.OUTCOMES:  # every series exists from the start, at 0
            self.attempts.labels(outcome)
        self.delivery_seconds = Histogram(
            "viraltrace_webhook_delivery_seconds",
            "Duration of one webhook delivery attempt, in seconds.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
            registry=r,
        )
        self.deliveries = Counter(
            "viraltrace_webhook_deliveries_total",
            "Webhook deliveries that reached a final state (delivered, failed, dead).",
            ["state"],
            registry=r,
        )
        self.endpoints_disabled = Counter(
            "viraltrace_webhook_endpoints_disabled_total",
            "Webhook endpoints disabled because their receiver answered 410 Gone.",
            registry=r,
        )
        self.pending = Gauge(
            "viraltrace_webhook_pending_deliveries",
            "Webhook deliveries waiting in the outbox (pending), as last counted.",
            registry=r,
        )
