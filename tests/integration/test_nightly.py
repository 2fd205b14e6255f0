"""The scheduler and its nightly pipeline: jobs persist in Postgres, one builder at a time, every run
(done or failed) in the history `flywheel rounds list` shows (real Postgres and broker)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from tests.conftest import wait_until
from tests.integration.test_hardcase_loop import query
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store, sampled_cases

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


def test_a_night_is_run_once_a_second_run_of_it_does_nothing(nightly: Settings) -> None:
    build = nightly.model_copy(update={"nightly_steps": "build"})
    first = run_steps(build, night="2026-12-06T03:00:00+00:00")
    assert first["build"]["round"] == 1
    assert run_steps(build, night="2026-12-06T03:00:00+00:00") == {
        "night": "2026-12-06T03:00:00+00:00", "skipped": "another instance claimed this night"}
    assert run_steps(build, night="2026-12-07T03:00:00+00:00")["build"]["round"] == 2
    runs = query(nightly.database_url, "SELECT status FROM nightly_runs ORDER BY position")
    assert runs == [("ok",), ("ok",)], "a skipped night records no run"
    claims = query(nightly.database_url, "SELECT data -> 'payload' ->> 'night' FROM events"
                                         " WHERE type = 'night_claimed' ORDER BY position")
    assert claims == [("2026-12-06T03:00:00+00:00",), ("2026-12-07T03:00:00+00:00",)]


def test_two_instances_claiming_one_night_at_once_build_once(nightly: Settings) -> None:
    build = nightly.model_copy(update={"nightly_steps": "build"})
    reports: list[dict[str, Any]] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        reports.append(run_steps(build, night="2026-12-06T03:00:00+00:00"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(("build" in r, r.get("skipped")) for r in reports) == [
        (False, "another instance claimed this night"), (True, None)]
    assert query(nightly.database_url, "SELECT number FROM rounds") == [(1,)]


def test_two_scheduler_processes_on_one_database_build_each_night_once(
    nightly: Settings, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    """Two real `flywheel scheduler` processes, every minute a night: each night is claimed once and built once,
    whichever instance fires. APScheduler's shared job store alone lets both fire a due job, and here they do."""
    every_minute = nightly.model_copy(update={"nightly_steps": "build", "nightly_cron": "* * * * *",
                                              "audit_cron": "0 0 1 1 *"})
    first = start_worker("scheduler", every_minute)
    url = nightly.database_url

    def registered() -> bool:
        return bool(query(url, "SELECT 1 FROM pg_tables WHERE tablename = 'scheduler_jobs'")) and bool(
            query(url, "SELECT 1 FROM scheduler_jobs WHERE id = 'nightly_pipeline'"))

    wait_until(registered, timeout=60, what="the first scheduler to register its jobs")
    second = start_worker("scheduler", every_minute)

    logs = [tmp_path / "scheduler-0.log", tmp_path / "scheduler-1.log"]

    def contended() -> set[str]:
        """The nights both processes started a run of."""
        started = [set(re.findall(r"flywheel\.jobs: nightly pipeline: the night of (\S+)", log.read_text()))
                   for log in logs]
        return started[0] & started[1]

    def run_of(night: str) -> bool:
        return bool(query(url, "SELECT 1 FROM nightly_runs r JOIN events e ON e.type = 'night_claimed'"
                               " AND e.data -> 'payload' ->> 'run_id' = r.run_id"
                               " WHERE e.data -> 'payload' ->> 'night' = %s", [night]))

    def both_fired_a_night_and_it_ran() -> bool:
        assert first.poll() is None and second.poll() is None, "a scheduler exited"
        return any(run_of(night) for night in contended())

    wait_until(both_fired_a_night_and_it_ran, timeout=180, what="both schedulers to fire one night", interval=1)
    night = next(n for n in sorted(contended()) if run_of(n))
    wait_until(lambda: f"the night of {night} is another instance's, skipped" in "".join(
        log.read_text() for log in logs), timeout=30, what="the other instance to skip the night")
    claims = query(url, "SELECT data -> 'payload' ->> 'night' FROM events WHERE type = 'night_claimed'")
    nights = [c[0] for c in claims]
    assert len(nights) == len(set(nights)) and night in nights
    runs = query(url, "SELECT status, steps FROM nightly_runs ORDER BY position")
    assert all(status == "ok" and "round" in steps["build"] for status, steps in runs), runs
    rounds = query(url, "SELECT number FROM rounds ORDER BY number")
    assert 1 <= len(rounds) == len(runs) <= len(nights), "one build per night, never two"


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
    cases = sampled_cases(url, sampled.sample_id)
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


def test_the_scheduler_serves_metrics_on_its_own_port(
    settings: Settings, start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scheduler = start_worker("scheduler", settings.model_copy(update={"scheduler_metrics_port": port}))
    seen: dict[str, str] = {}

    def serving() -> bool:
        assert scheduler.poll() is None, "the scheduler exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                seen["body"] = response.read().decode()
        except OSError:
            return False
        return True

    wait_until(serving, timeout=60, what="the scheduler's metrics endpoint")
    assert "process_cpu_seconds_total" in seen["body"] and "python_info" in seen["body"]
