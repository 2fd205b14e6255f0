"""Scheduled jobs: importable module-level functions taking plain arguments (the job store pickles references)."""

from __future__ import annotations

import asyncio
import logging

from store.db import connect
from store.projections import check

log = logging.getLogger("flywheel.jobs")


def audit_projections(database_url: str) -> bool:
    """Nightly: rebuild the read models from the log into scratch tables and compare with the live ones."""

    async def run() -> bool:
        conn = await connect(database_url)
        try:
            drifts = await check(conn)
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
