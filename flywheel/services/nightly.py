"""The nightly pipeline's steps, run in order by the scheduler: sample → generate → select → build."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from flywheel.settings import Settings

log = logging.getLogger("flywheel.nightly")


def run_steps(settings: Settings) -> dict[str, Any]:
    """Run the configured steps; a step that is not configured (no generator, no reward model) is skipped
    with a reason. Returns what each step did, for the job log."""
    from flywheel.domain.rounds import RoundConfig
    from flywheel.services.build_round import BuilderBusy, build_round
    from flywheel.services.generation import generate_candidates, make_generator, sample_hard_cases, select_candidates
    from flywheel.services.rollback import kafka_announcer
    from sampling.generation import SamplingSpec
    from sampling.hardcases import SamplerConfig
    from sampling.selection import SelectionConfig
    from store.db import connect

    steps = [s.strip() for s in settings.nightly_steps.split(",") if s.strip()]
    report: dict[str, Any] = {}

    async def run() -> None:
        conn = await connect(settings.database_url, autocommit=True)
        try:
            if "sample" in steps:
                out = await sample_hard_cases(conn, SamplerConfig(budget=settings.nightly_budget))
                report["sample"] = {"sample_id": out.sample_id, "chosen": len(out.result.chosen), "new": out.new}
            if "generate" in steps:
                if not (settings.generator_model or settings.generator_url):
                    report["generate"] = "skipped: no FLYWHEEL_GENERATOR_MODEL or FLYWHEEL_GENERATOR_URL"
                else:
                    generator = make_generator(settings)
                    generator.load()
                    try:
                        g = await generate_candidates(conn, generator, SamplingSpec())
                    finally:
                        generator.unload()
                    report["generate"] = {"groups_new": g.groups_new, "candidates": g.candidates}
            if "select" in steps:
                if not settings.reward_model:
                    report["select"] = "skipped: no FLYWHEEL_REWARD_MODEL"
                else:
                    from sampling.adapters.reward_model import RewardModelScorer

                    s = await select_candidates(conn, [RewardModelScorer(settings.reward_model)], SelectionConfig())
                    report["select"] = {"groups": s.groups, "sft_samples": s.sft_samples, "pairs": s.pairs}
            if "build" in steps:
                try:
                    b = await build_round(conn, settings.rounds_root, RoundConfig(), announce=kafka_announcer(
                        settings.kafka_bootstrap, settings.rounds_topic))
                    report["build"] = {"round": b.round, "rows_out": b.rows_out, "content_hash": b.content_hash}
                except BuilderBusy as e:
                    report["build"] = f"skipped: {e}"
        finally:
            await conn.close()

    started = datetime.now(UTC).isoformat()
    try:
        asyncio.run(run())
    except Exception as e:
        _record_run(settings, started, "failed", report, f"{type(e).__name__}: {e}")
        raise
    _record_run(settings, started, "ok", report, None)
    log.info("nightly pipeline: %s", report)
    return report


def _record_run(settings: Settings, started: str, status: str, steps: dict[str, Any], error: str | None) -> None:
    """Append the run to the log (`flywheel rounds list` shows it), on a connection of its own: a failed run's
    may be what failed. If even that fails, the scheduler's log is all there is, and it says so."""
    from store.db import connect
    from store.projections import record
    from store.rounds import nightly_run

    async def append() -> None:
        conn = await connect(settings.database_url, autocommit=True)
        try:
            await record(conn, [nightly_run(str(uuid.uuid4()), started, status, steps, error)])
        finally:
            await conn.close()

    try:
        asyncio.run(append())
    except Exception:
        log.exception("could not record the nightly run (%s, %s) in the log", status, error)
        if status == "ok":
            raise
