"""The scheduler and its nightly pipeline: jobs persist in Postgres, one builder at a time, every run
(done or failed) in the history `flywheel rounds list` shows (real Postgres and broker)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from flywheel.bootstrap import hard_cases
from flywheel.bootstrap import nightly as run_steps
from flywheel.domain.events import CandidatesGenerated
from flywheel.entrypoints.scheduler import configure
from flywheel.services.sample import sample_hard_cases
from flywheel.settings import Endpoints, Settings
from flywheel.simulator import generate
from sampling.adapters.checks import last_user_text
from sampling.generation import Candidate, CandidateGroup, SamplingSpec
from sampling.hardcases import SamplerConfig
from store.projections import record
from store.unit_of_work import BUILD_LOCK
from streams.topics import ensure_topics
from tests.integration.test_hardcase_loop import query
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store

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
        other.execute("SELECT pg_advisory_lock(%s)", [BUILD_LOCK])  # another instance is building
        report = run_steps(nightly.model_copy(update={"nightly_steps": "build"}))
    assert report == {"build": "skipped: another round build is running"}
    built = run_steps(nightly.model_copy(update={"nightly_steps": "build"}))["build"]
    assert (built["round"], built["state"]) == (1, "promoted")
    with psycopg.connect(nightly.database_url) as conn:  # the nightly job's round events say who did them
        (history,) = conn.execute("SELECT history FROM rounds WHERE number = 1").fetchone() or (None,)
    assert [(h["what"], h["by"]) for h in history] == [("built (promoted)", "scheduler")]


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


def candidate_groups(settings: Settings, texts: list[list[str]], model_version: str = "m-test") -> list[str]:
    """Sample as many hard cases as `texts` has groups and record a generated group of those texts for each;
    returns their conversations' last user messages."""
    url = settings.database_url
    sampled = in_store(url, lambda conn: sample_hard_cases(hard_cases(conn), SamplerConfig(budget=len(texts),
                                                                                            seed=1)))
    [(payload,)] = query(url, "SELECT data -> 'payload' FROM events WHERE event_id = %s::uuid", [sampled.sample_id])
    cases = payload["chosen"]
    assert len(cases) == len(texts)
    spec = SamplingSpec(n=len(texts[0]), seed=7)
    events = [CandidatesGenerated.for_case(sampled.sample_id, case, CandidateGroup(
        prompt=tuple(case["messages"]), candidates=tuple(
            Candidate(text=t, token_count=len(t.split()), cumulative_logprob=None, finish_reason="stop") for t in ts),
        spec=spec, seed=spec.prompt_seed(i), model_version=model_version, prompt_tokens=10,
        generator="vllm").to_event_payload()) for i, (case, ts) in enumerate(zip(cases, texts, strict=True))]
    assert len(in_store(url, lambda conn: record(conn, events))) == len(texts)
    return [str(last_user_text(c["messages"])) for c in cases]


def test_the_nightly_select_runs_with_checks_not_only_a_reward_model(
    nightly: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path,
) -> None:
    prompts = candidate_groups(nightly, [["It is 41.", "The answer is 42.", "no idea"], ["a", "b", "c"]])
    checks = tmp_path / "checks.jsonl"
    checks.write_text(json.dumps({"prompt": prompts[0], "answer": 42}) + "\n")
    configured = nightly.model_copy(update={"nightly_steps": "select", "select_checks": str(checks),
                                            "select_decide_by": "numeric_answer"})

    # Thresholds are on the deciding scorer's scale: 5 on a 0/1 check fails the run, with its error, selecting nothing.
    with pytest.raises(ValueError, match="off numeric_answer's scale 0-1"):
        run_steps(configured.model_copy(update={"select_sft_threshold": 5.0}))
    report = run_steps(configured.model_copy(update={"select_sft_threshold": 1.0, "select_min_margin": 1.0}))
    assert report["select"] == {"groups": 1, "sft_samples": 1, "pairs": 1, "reasons": {}, "not_judged": 1}
    [(selection,)] = query(nightly.database_url, "SELECT selection FROM candidate_groups WHERE selection IS NOT NULL")
    assert (selection["pair"]["chosen"], selection["decided_by"]) == ("The answer is 42.", "numeric_answer")
    assert selection["vetoed"] == [0, 2] and selection["pair"]["rejected"] == "It is 41."

    failed, ok = json.loads(run_cli("rounds", "list", "--json").stdout)["nightly_runs"]
    assert failed["status"] == "failed" and "off numeric_answer's scale" in failed["error"]
    assert ok["status"] == "ok" and ok["steps"]["select"]["pairs"] == 1
