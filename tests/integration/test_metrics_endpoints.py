"""The metrics endpoints of real processes: the ingest worker (with its signals projector) and the scheduler (its
jobs' runs and the round its nightly run built), scraped over HTTP."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flywheel.settings import Settings
from flywheel.simulator import generate
from tests.conftest import wait_until
from tests.integration.test_signals_store import ingest_all

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the endpoint, by name and labels; empty while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(port: int, name: str, **labels: str) -> Callable[[], bool]:
    """A predicate: the sample is there and above 0 (what it last saw is in .last)."""
    def check() -> bool:
        found = scrape(port).get((name, tuple(sorted(labels.items()))))
        check.last = found  # type: ignore[attr-defined]
        return bool(found)

    return check


def test_the_ingest_worker_exports_ingest_and_the_projectors_lag(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    start_worker("worker", settings.model_copy(update={"metrics_port": port}))
    run_cli("simulate", "--events", "400", "--seed", "5", "--bad-fraction", "0.1")
    wait_until(sample(port, "flywheel_events_ingested_total", type="interaction"), timeout=120,
               what="ingested interactions on the worker's endpoint")
    wait_until(sample(port, "flywheel_log_head_position"), timeout=60, what="the log's head on the endpoint")
    wait_until(sample(port, "flywheel_signals_position"), timeout=60, what="the projector's position")
    seen = scrape(port)
    assert 0 <= seen[("flywheel_signals_behind", ())] <= seen[("flywheel_log_head_position", ())]
    assert sum(v for (name, _), v in seen.items() if name == "flywheel_events_dead_lettered_total") > 0
    assert seen[("process_resident_memory_bytes", ())] > 0


def test_the_scheduler_exports_its_runs_and_the_round_its_nightly_run_built(
    settings: Settings, start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    ingest_all(settings.database_url, [m.value for m in generate(900, seed=8) if m.expected_reason is None], [300])
    port = free_port()
    every_minute = settings.model_copy(update={
        "scheduler_metrics_port": port, "nightly_cron": "* * * * *", "audit_cron": "* * * * *",
        "nightly_steps": "build"})
    start_worker("scheduler", every_minute)
    wait_until(sample(port, "flywheel_scheduler_job_runs_total", job="nightly_pipeline", outcome="ok"),
               timeout=150, what="a nightly run on the scheduler's endpoint")
    wait_until(sample(port, "flywheel_scheduler_job_runs_total", job="audit_projections", outcome="ok"),
               timeout=30, what="an audit run on the scheduler's endpoint")
    seen = scrape(port)

    def value(name: str, **labels: str) -> float:
        return seen[(name, tuple(sorted(labels.items())))]

    assert value("flywheel_round_last_number") == 1 and value("flywheel_round_builds_total", state="promoted") == 1
    assert value("flywheel_round_last_rows_in") >= value("flywheel_round_last_rows_out") > 0
    assert value("flywheel_round_last_rows_removed", gate="consent") > 0  # the simulator's users without consent
    assert value("flywheel_round_last_gate_rows", gate="consent", side="out") == value(
        "flywheel_round_last_gate_rows", gate="consent", side="in") - value("flywheel_round_last_rows_removed",
                                                                            gate="consent")
    assert value("flywheel_round_last_gate_rows", gate="distribution_cap", side="out") == value(
        "flywheel_round_last_rows_out")
    assert value("flywheel_round_last_build_seconds") > 0
    assert value("flywheel_scheduler_job_last_ok", job="nightly_pipeline") == 1
    assert value("flywheel_scheduler_job_last_duration_seconds", job="nightly_pipeline") > 0
    assert value("flywheel_scheduler_job_last_success_timestamp_seconds", job="audit_projections") > 0
