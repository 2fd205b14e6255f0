"""The scheduler and its nightly pipeline: jobs persist in Postgres, one builder at a time, every run
(done or failed) in the history `flywheel rounds list` shows (real Postgres and broker)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import psycopg
import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from flywheel.bootstrap import nightly as run_steps
from flywheel.entrypoints.scheduler import configure
from flywheel.settings import Endpoints, Settings
from flywheel.simulator import generate
from store.unit_of_work import ROUNDS_LOCK
from streams.topics import ensure_topics
from tests.integration.test_signals_store import ingest_all

pytestmark = pytest.mark.integration


@pytest.fixture
def nightly(settings: Settings) -> Settings:
    ensure_topics(settings.kafka_bootstrap, settings)
    ingest_all(settings.database_url, [m.value for m in generate(1500, seed=6) if m.expected_reason is None], [500])
    return settings.model_copy(update={"nightly_steps": "sample,generate,select,build", "nightly_budget": 5})


def test_every_nightly_run_is_in_the_history_failed_ones_with_their_error(
    nightly: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    report = run_steps(nightly)
    assert report["sample"]["chosen"] > 0 and report["build"]["round"] == 1
    assert report["generate"].startswith("skipped") and report["select"].startswith("skipped")

    broken = nightly.model_copy(update={"rounds_dir": str(nightly.home / "not-a-dir")})
    (nightly.home / "not-a-dir").write_text("a file where the rounds should go")
    with pytest.raises(OSError):
        run_steps(broken.model_copy(update={"nightly_steps": "build"}))

    listed = json.loads(run_cli("rounds", "list", "--json").stdout)
    assert [r["number"] for r in listed["rounds"]] == [1]
    ok, failed = listed["nightly_runs"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["steps"]["build"]["round"] == 1
    assert failed["status"] == "failed" and "not-a-dir" in failed["error"] and failed["steps"] == {}
    assert ok["started_at"] <= ok["finished_at"] <= failed["started_at"]
    human = run_cli("rounds", "list").stdout
    assert "nightly runs" in human and "FAILED" in human and "not-a-dir" in human


def test_one_builder_at_a_time_a_busy_night_skips_its_build(nightly: Settings) -> None:
    with psycopg.connect(nightly.database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [ROUNDS_LOCK])  # another instance is building
        report = run_steps(nightly.model_copy(update={"nightly_steps": "build"}))
    assert report == {"build": "skipped: another round build or rollback is running"}
    assert run_steps(nightly.model_copy(update={"nightly_steps": "build"}))["build"]["round"] == 1


def test_scheduler_jobs_persist_in_postgres_once_across_instances(settings: Settings, endpoints: Endpoints) -> None:
    for _ in range(2):  # a second instance (or a restart) replaces the jobs, it does not add them again
        scheduler = configure(BackgroundScheduler(), settings, endpoints)
        scheduler.start(paused=True)
        scheduler.shutdown()
    with psycopg.connect(settings.database_url) as conn:
        jobs = conn.execute("SELECT id, next_run_time FROM scheduler_jobs ORDER BY id").fetchall()
    assert [j[0] for j in jobs] == ["audit_projections", "nightly_pipeline"] and all(j[1] for j in jobs)
    restarted = configure(BackgroundScheduler(), settings, endpoints)
    restarted.start(paused=True)
    try:
        job = restarted.get_job("nightly_pipeline")
        assert job is not None and job.func_ref == "flywheel.entrypoints.jobs:nightly_pipeline"
        assert job.misfire_grace_time == 3600 and job.coalesce and job.max_instances == 1
    finally:
        restarted.shutdown()
