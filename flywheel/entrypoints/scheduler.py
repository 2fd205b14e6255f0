"""APScheduler with its job store in the same Postgres: jobs survive restarts and run once across instances."""

from __future__ import annotations

from dataclasses import asdict

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from flywheel.settings import Endpoints, Settings
from store.db import sqlalchemy_url


def configure(scheduler: BaseScheduler, settings: Settings, endpoints: Endpoints) -> BaseScheduler:
    scheduler.configure(
        jobstores={"default": SQLAlchemyJobStore(url=sqlalchemy_url(endpoints.database_url),
                                                 tablename="scheduler_jobs")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone="UTC",
    )
    scheduler.add_job(
        "flywheel.entrypoints.jobs:audit_projections",
        CronTrigger.from_crontab(settings.audit_cron, timezone="UTC"),
        kwargs={"database_url": endpoints.database_url, "signals": asdict(settings.signals)},
        id="audit_projections",
        name="nightly read-model audit (replay --check)",
        replace_existing=True,
    )
    scheduler.add_job(
        "flywheel.entrypoints.jobs:nightly_pipeline",
        CronTrigger.from_crontab(settings.nightly_cron, timezone="UTC"),
        kwargs={"settings": {**settings.model_dump(mode="json"), "database_url": endpoints.database_url,
                             "kafka_bootstrap": endpoints.kafka_bootstrap}},
        id="nightly_pipeline",
        name="nightly round: sample, generate, select, build",
        replace_existing=True,
    )
    return scheduler
