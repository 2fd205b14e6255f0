"""Prometheus metrics of each long-running process (ingest worker, generation worker, scheduler), each in a registry
of its own (nothing registered at import)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from flywheel.domain.rounds.gates import GATES
from store.ingest import BatchOutcome


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    """A registry with the process's own figures (CPU, memory, open files; Python's version)."""
    if registry is not None:
        return registry
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class Served:
    registry: CollectorRegistry

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)


def rows_through_gates(rows_out: int, removed: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Each gate's rows in and out, in the order the gates run: a removed row is counted under the first gate that
    removed it, so the rows reaching the first gate are the rows kept plus every removal (rows of kinds the round
    does not build never reach a gate)."""
    entering = rows_out + sum(removed.values())
    through = {}
    for gate in GATES:
        left = entering - removed.get(gate, 0)
        through[gate] = (entering, left)
        entering = left
    return through


class Metrics(Served):
    """The ingest worker's: what ingest stored, dead-lettered and parked, and how far the signals projector is."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = _registry(registry)
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
        self.log_head = Gauge("flywheel_log_head_position", "Newest event-log position", registry=r)
        self.signals_behind = Gauge(
            "flywheel_signals_behind", "Event-log positions the signals projector has still to apply (its lag)",
            registry=r,
        )

    def observe(self, outcome: BatchOutcome) -> None:
        for kind, n in outcome.stored.items():
            self.stored.labels(kind).inc(n)
        for reason, n in outcome.dead.items():
            self.dead_lettered.labels(reason).inc(n)
        self.parked.inc(outcome.parked)
        self.duplicates.inc(outcome.duplicates + outcome.redelivered)
        self.redactions.inc(outcome.redactions)

    def projector_at(self, head: int, applied: int) -> None:
        self.log_head.set(head)
        self.signals_behind.set(max(0, head - applied))


class GenerationMetrics(Served):
    """A generation worker's: requests served or dead-lettered, what the engine produced, and its errors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = _registry(registry)
        r = self.registry
        self.requests = Counter("flywheel_generation_requests", "Generation requests consumed, by outcome "
                                "(generated, dead_lettered)", ["outcome"], registry=r)
        self.candidates = Counter("flywheel_generation_candidates", "Candidates generated", registry=r)
        self.completion_tokens = Counter("flywheel_generation_completion_tokens", "Completion tokens generated",
                                         registry=r)
        self.engine_errors = Counter("flywheel_generation_engine_errors", "Engine calls that failed, by what came "
                                     "of them (retried, dead_lettered)", ["outcome"], registry=r)
        self.engine_seconds = Histogram(
            "flywheel_generation_engine_seconds", "Duration of one engine call (a batch of requests)", registry=r,
            buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
        )
        for outcome in ("generated", "dead_lettered"):  # every series exists from the start, at 0
            self.requests.labels(outcome)
        for outcome in ("retried", "dead_lettered"):
            self.engine_errors.labels(outcome)


class SchedulerMetrics(Served):
    """The scheduler's: each job's runs (last run, duration, outcome) and the round builds of its nightly runs."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = _registry(registry)
        r = self.registry
        self.runs = Counter("flywheel_scheduler_job_runs", "Job runs, by job and outcome (ok, failed, missed)",
                            ["job", "outcome"], registry=r)
        self.last_run = Gauge("flywheel_scheduler_job_last_run_timestamp_seconds", "When a job's last run ended",
                              ["job"], registry=r)
        self.last_success = Gauge("flywheel_scheduler_job_last_success_timestamp_seconds",
                                  "When a job's last successful run ended", ["job"], registry=r)
        self.last_duration = Gauge("flywheel_scheduler_job_last_duration_seconds", "How long a job's last run took",
                                   ["job"], registry=r)
        self.last_ok = Gauge("flywheel_scheduler_job_last_ok", "1 if a job's last run succeeded, else 0", ["job"],
                             registry=r)
        self.builds = Counter("flywheel_round_builds", "Round builds, by state (promoted, held, skipped)", ["state"],
                              registry=r)
        self.round = Gauge("flywheel_round_last_number", "Number of the last round built", registry=r)
        self.round_held = Gauge("flywheel_round_last_held", "1 if the last round built was held, else 0", registry=r)
        self.rows_in = Gauge("flywheel_round_last_rows_in", "Rows the last round's gates were given", registry=r)
        self.rows_out = Gauge("flywheel_round_last_rows_out", "Rows the last round kept", registry=r)
        self.removed = Gauge("flywheel_round_last_rows_removed", "Rows a gate removed from the last round",
                             ["gate"], registry=r)
        self.through_gate = Gauge("flywheel_round_last_gate_rows", "Rows that reached a gate (side=in) and that it "
                                  "let through (side=out) in the last round", ["gate", "side"], registry=r)
        self.build_seconds = Gauge("flywheel_round_last_build_seconds", "How long the last round build took",
                                   registry=r)

    def job_ran(self, job: str, *, ok: bool, ended: float, seconds: float | None) -> None:
        self.runs.labels(job, "ok" if ok else "failed").inc()
        self.last_run.labels(job).set(ended)
        self.last_ok.labels(job).set(1 if ok else 0)
        if ok:
            self.last_success.labels(job).set(ended)
        if seconds is not None:
            self.last_duration.labels(job).set(seconds)

    def job_missed(self, job: str) -> None:
        self.runs.labels(job, "missed").inc()

    def round_built(self, build: Mapping[str, Any] | str) -> None:
        """A nightly run's build step: its report (round, state, rows in and out, rows removed by gate, seconds),
        or why it was skipped."""
        if isinstance(build, str):
            self.builds.labels("skipped").inc()
            return
        self.builds.labels(build["state"]).inc()
        self.round.set(build["round"])
        self.round_held.set(1 if build["state"] == "held" else 0)
        self.rows_in.set(build["rows_in"])
        self.rows_out.set(build["rows_out"])
        for gate, n in build["removed"].items():
            self.removed.labels(gate).set(n)
        for gate, (entered, left) in rows_through_gates(build["rows_out"], build["removed"]).items():
            self.through_gate.labels(gate, "in").set(entered)
            self.through_gate.labels(gate, "out").set(left)
        self.build_seconds.set(build["seconds"])
