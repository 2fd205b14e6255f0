"""Prometheus metrics of the worker, in a registry of its own (nothing registered at import)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from store.ingest import BatchOutcome


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stored = Counter("flywheel_events_ingested", "Events appended to the store", ["type"], registry=r)
        self.dead_lettered = Counter(
            "flywheel_events_dead_lettered", "Messages dead-lettered", ["reason"], registry=r
        )
        self.parked = Counter("flywheel_events_parked", "Feedback parked until its interaction arrives", registry=r)
        self.duplicates = Counter("flywheel_events_duplicate", "Duplicate or redelivered messages", registry=r)
        self.redactions = Counter("flywheel_redactions", "PII spans redacted before storage", registry=r)
        self.batch_seconds = Histogram(
            "flywheel_batch_seconds", "Latency of one consumed batch, consume to commit", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

        self.signal_groups = Counter(
            "flywheel_signal_groups_derived", "Prompt groups re-derived by the signals projector", registry=r
        )
        self.signals_position = Gauge(
            "flywheel_signals_position", "Last event-log position the signals projector applied", registry=r
        )

    def observe(self, outcome: BatchOutcome) -> None:
        for kind, n in outcome.stored.items():
            self.stored.labels(kind).inc(n)
        for reason, n in outcome.dead.items():
            self.dead_lettered.labels(reason).inc(n)
        self.parked.inc(outcome.parked)
        self.duplicates.inc(outcome.duplicates + outcome.redelivered)
        self.redactions.inc(outcome.redactions)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)


def serve_process_metrics(port: int) -> CollectorRegistry:
    """The process's own metrics (CPU, memory, open files; Python's version) on `port`, for a process with no
    counters of its own yet (the scheduler, a generation worker): what a liveness check or an alert reads."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    start_http_server(port, addr="0.0.0.0", registry=registry)
    return registry
