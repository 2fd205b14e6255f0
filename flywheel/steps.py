"""The nightly pipeline's steps, run in order by the scheduler: sample → generate → select → build."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from flywheel.settings import Settings

log = logging.getLogger("flywheel.nightly")


def run_steps(settings: Settings) -> dict[str, Any]:
    """Run the configured steps; a step that is not configured (no generator, no reward model) is skipped
    with a reason. Returns what each step did, for the job log."""
    from flywheel.generation import generate_candidates, make_generator, sample_hard_cases, select_candidates
    from flywheel.oncall import kafka_announcer
    from flywheel.roundbuild import BuilderBusy, build_round
    from flywheel.rounds import RoundConfig
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
                    from sampling.scorers_rm import RewardModelScorer

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

    asyncio.run(run())
    log.info("nightly pipeline: %s", report)
    return report
