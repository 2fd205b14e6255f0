"""Scheduled jobs: importable module-level functions taking plain arguments (the job store pickles references)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from flywheel.domain.signals import SignalConfig
from flywheel.settings import Settings
from store.db import connect
from store.projections import check

log = logging.getLogger("flywheel.jobs")


def own_database_url(settings: Settings | None = None) -> str:
    """The database a job runs against: this process's FLYWHEEL_DATABASE_URL, else its local stack's."""
    from flywheel.bootstrap import resolve

    settings = settings or Settings()
    return settings.database_url or resolve(settings).database_url


def audit_projections(database_url: str = "", signals: dict[str, Any] | None = None) -> bool:
    """Nightly: rebuild the read models from the log into scratch tables and compare with the live ones
    (`database_url`: given by jobs stored before it was left out of the job store)."""
    database_url = database_url or own_database_url()

    async def run() -> bool:
        conn = await connect(database_url)
        try:
            drifts = await check(conn, SignalConfig(**(signals or {})))
        finally:
            await conn.close()
        bad = [d for d in drifts if d.missing or d.extra]
        for d in bad:
            log.error("read model %s drifted from the log: %d missing, %d extra rows", d.table, d.missing, d.extra)
        return not bad

    ok = asyncio.run(run())
    if ok:
        log.info("read models match a rebuild from the log")
    return ok


def nightly_pipeline(settings: dict[str, Any]) -> dict[str, Any]:
    """The nightly round: sample → generate → select → build, each step skippable (FLYWHEEL_NIGHTLY_STEPS).

    Steps that need what is not configured (no generator model or URL, no reward model) are skipped and
    say so. Each night runs once across scheduler instances: the run claims its night (the cron's fire time it
    belongs to) in the log, and an instance that finds it claimed does nothing."""
    from flywheel.bootstrap import nightly
    from flywheel.entrypoints.scheduler import night_of

    configured = Settings(**settings)
    configured = configured.model_copy(update={"database_url": own_database_url(configured)})
    night = night_of(configured.nightly_cron, datetime.now(UTC))
    log.info("nightly pipeline: the night of %s", night)
    return nightly(configured, night=night)
