"""APScheduler with its job store in the same Postgres: jobs survive restarts; a night's run claims the night in
the log, so it runs once across instances."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from flywheel.settings import Endpoints, Settings, secret_names
from store.db import sqlalchemy_url

if TYPE_CHECKING:
    from streams.metrics import SchedulerMetrics

MISFIRE_GRACE = 3600  # seconds a job may start late (a busy or restarting scheduler) and still run


def night_of(cron: str, now: datetime) -> str:
    """The night a run starting at `now` belongs to: the cron's latest fire time at or before `now`. A scheduled
    run starts at its fire time or late within the misfire grace, never early, so every instance running the
    same fire time names the same night. Outside any fire time's grace (a run by hand), the night is `now`."""
    trigger = CronTrigger.from_crontab(cron, timezone="UTC")
    night = None
    fire = trigger.get_next_fire_time(None, now - timedelta(seconds=MISFIRE_GRACE))
    while fire is not None and fire <= now:
        night = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return (night or now).isoformat()


def configure(scheduler: BaseScheduler, settings: Settings, endpoints: Endpoints,
              metrics: SchedulerMetrics | None = None) -> BaseScheduler:
    """The scheduler's jobs (persisted in Postgres); with `metrics`, each run and each nightly build is counted."""
    scheduler.configure(
        jobstores={"default": SQLAlchemyJobStore(url=sqlalchemy_url(endpoints.database_url),
                                                 tablename="scheduler_jobs")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE},
        timezone="UTC",
    )
    scheduler.add_job(
        "flywheel.entrypoints.jobs:audit_projections",
        CronTrigger.from_crontab(settings.audit_cron, timezone="UTC"),
        kwargs={"signals": asdict(settings.signals)},
        id="audit_projections",
        name="nightly read-model audit (replay --check)",
        replace_existing=True,
    )
    scheduler.add_job(
        "flywheel.entrypoints.jobs:nightly_pipeline",
        CronTrigger.from_crontab(settings.nightly_cron, timezone="UTC"),
        # Credentials stay out of the job store (a table any reader of the database sees): the job reads the
        # database URL and the passwords from its own process's settings (flywheel.entrypoints.jobs.own_database_url).
        kwargs={"settings": {**settings.model_dump(mode="json", exclude={"database_url", *secret_names()}),
                             "kafka_bootstrap": endpoints.kafka_bootstrap}},
        id="nightly_pipeline",
        name="nightly round: sample, generate, select, build",
        replace_existing=True,
    )
    if metrics is not None:
        observe(scheduler, metrics)
    return scheduler


def observe(scheduler: BaseScheduler, metrics: SchedulerMetrics) -> None:
    """Count every job run in `metrics`: when it ended, how long it took, whether it succeeded (an audit that found
    drift did not), and the round a nightly run built."""
    started: dict[str, float] = {}  # by job id: a job runs one instance at a time (max_instances=1)

    def seen(event: JobEvent) -> None:
        if event.code == EVENT_JOB_SUBMITTED:
            started[event.job_id] = time.monotonic()
            return
        if event.code == EVENT_JOB_MISSED:
            metrics.job_missed(event.job_id)
            return
        assert isinstance(event, JobExecutionEvent)
        begun = started.pop(event.job_id, None)
        ok = event.exception is None and event.retval is not False
        metrics.job_ran(event.job_id, ok=ok, ended=time.time(),
                        seconds=None if begun is None else time.monotonic() - begun)
        if isinstance(event.retval, dict) and "build" in event.retval:
            metrics.round_built(event.retval["build"])

    scheduler.add_listener(seen, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
