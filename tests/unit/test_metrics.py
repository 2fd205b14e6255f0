"""What each process's metrics say, and the Grafana dashboard in infra/ queries only metrics they export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from streams.metrics import GenerationMetrics, Metrics, SchedulerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "flywheel.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry's families give, whether or not a labelled series exists yet."""
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES.get(family.type, ("",))}


def test_the_dashboard_parses_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {name for e in exprs for name in re.findall(r"\bflywheel_[a-z_]+", e)}
    names = set().union(*(exported(m.registry) for m in (Metrics(), GenerationMetrics(), SchedulerMetrics())))
    assert queried and queried <= names, queried - names
    # every process is on it: ingest, the signals projector, generation, the scheduler, round builds
    for part in ("flywheel_events_", "flywheel_signals_behind", "flywheel_generation_", "flywheel_scheduler_",
                 "flywheel_round_"):
        assert any(q.startswith(part) for q in queried), part


def test_a_nightly_build_report_reaches_the_round_gauges() -> None:
    m = SchedulerMetrics()
    m.round_built({"round": 4, "state": "held", "rows_in": 900, "rows_out": 610,
                   "removed": {"consent": 200, "dedup": 90}, "seconds": 2.5})
    m.round_built("skipped: another round build is running")

    def value(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    assert (value("flywheel_round_last_number"), value("flywheel_round_last_held")) == (4, 1)
    assert (value("flywheel_round_last_rows_in"), value("flywheel_round_last_rows_out")) == (900, 610)
    assert value("flywheel_round_last_rows_removed", gate="dedup") == 90
    assert (value("flywheel_round_last_gate_rows", gate="consent", side="in"),
            value("flywheel_round_last_gate_rows", gate="consent", side="out")) == (900, 700)
    assert (value("flywheel_round_last_gate_rows", gate="dedup", side="in"),
            value("flywheel_round_last_gate_rows", gate="dedup", side="out")) == (700, 610)
    assert value("flywheel_round_last_gate_rows", gate="distribution_cap", side="out") == 610
    assert value("flywheel_round_builds_total", state="held") == value("flywheel_round_builds_total",
                                                                       state="skipped") == 1


def test_a_failed_job_run_keeps_the_last_success() -> None:
    m = SchedulerMetrics()
    m.job_ran("nightly_pipeline", ok=True, ended=1000.0, seconds=12.0)
    m.job_ran("nightly_pipeline", ok=False, ended=2000.0, seconds=3.0)

    def value(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, {"job": "nightly_pipeline", **labels})

    assert value("flywheel_scheduler_job_last_success_timestamp_seconds") == 1000.0
    assert (value("flywheel_scheduler_job_last_run_timestamp_seconds"), value("flywheel_scheduler_job_last_ok"),
            value("flywheel_scheduler_job_last_duration_seconds")) == (2000.0, 0, 3.0)
    assert value("flywheel_scheduler_job_runs_total", outcome="ok") == value("flywheel_scheduler_job_runs_total",
                                                                             outcome="failed") == 1


def test_the_projector_lag_is_the_head_past_what_it_applied() -> None:
    m = Metrics()
    m.projector_at(head=1200, applied=1150)
    assert m.registry.get_sample_value("flywheel_signals_behind") == 50
