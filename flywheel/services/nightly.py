"""The nightly run: sample → generate → select → build, each step skippable, the run recorded either way."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from flywheel.domain.commands import BuildRound
from flywheel.domain.events import NightClaimed, NightlyRunFinished
from flywheel.domain.rounds import RoundConfig
from flywheel.ports import BuilderBusy, EventLog, HardCaseStore
from flywheel.services.build_round import Published
from flywheel.services.generate import generate_candidates
from flywheel.services.sample import sample_hard_cases
from flywheel.services.select import Scoring, select_candidates
from sampling.generation import Generator, SamplingSpec
from sampling.hardcases import SamplerConfig

log = logging.getLogger("flywheel.nightly")

SCHEDULER = "scheduler"  # who the nightly run's round events say did it
STEPS = ("sample", "generate", "select", "build")  # always in this order, whatever order they are listed in
NO_GENERATOR = "skipped: no FLYWHEEL_GENERATOR_MODEL or FLYWHEEL_GENERATOR_URL"
NO_SCORER = "skipped: no FLYWHEEL_REWARD_MODEL, FLYWHEEL_JUDGE_RUBRIC or FLYWHEEL_SELECT_CHECKS"
NIGHT_TAKEN = "another instance claimed this night"


async def run_nightly(
    steps: Sequence[str], *, store: HardCaseStore, budget: int, generator: Callable[[], Generator] | None,
    scoring: Callable[[], Scoring] | None, build: Callable[[BuildRound], Awaitable[Published]],
    history: Callable[[], AbstractAsyncContextManager[EventLog]], run_id: str, started_at: str,
    night: str | None = None,
    config: RoundConfig | None = None,
) -> dict[str, Any]:
    """Run the listed steps; one whose adapters are not configured (`generator`, `scoring` None) is skipped with a
    reason, and so is a build while another instance builds. The run is recorded in the log (`history`: a unit of
    work of its own, as the store may be what failed) as ok or failed with its error. Returns what each step did.

    With a `night` (a scheduled run), the run first claims it in the log: when another instance already has, this
    one does nothing, records nothing and says so (`{"night": ..., "skipped": ...}`)."""
    if night is not None and not await _claim(history, NightClaimed(night=night, run_id=run_id)):
        log.info("nightly pipeline: the night of %s is another instance's, skipped", night)
        return {"night": night, "skipped": NIGHT_TAKEN}
    report: dict[str, Any] = {}
    try:
        if "sample" in steps:
            out = await sample_hard_cases(store, SamplerConfig(budget=budget), round_config=config)
            report["sample"] = {"sample_id": out.sample_id, "chosen": len(out.result.chosen), "new": out.new,
                                "contaminated": out.contaminated, "sliced": out.sliced}
        if "generate" in steps:
            report["generate"] = NO_GENERATOR if generator is None else await _generate(store, generator())
        if "select" in steps:
            if scoring is None:
                report["select"] = NO_SCORER
            else:
                s = await select_candidates(store, scoring())
                report["select"] = {"groups": s.groups, "sft_samples": s.sft_samples, "pairs": s.pairs,
                                    "reasons": s.reasons, "not_judged": s.not_judged,
                                    **({"audit": s.audit} if s.audit else {})}
        if "build" in steps:
            try:
                started = time.perf_counter()
                b = await build(BuildRound(config=config or RoundConfig(), by=SCHEDULER))
                report["build"] = {"round": b.round, "rows_in": b.rows_in, "rows_out": b.rows_out,
                                   "removed": b.removed, "content_hash": b.content_hash, "state": b.state,
                                   "seconds": round(time.perf_counter() - started, 3)}
            except BuilderBusy as e:
                report["build"] = f"skipped: {e}"
    except Exception as e:
        await _remember(history, NightlyRunFinished(run_id=run_id, started_at=started_at, status="failed",
                                                    steps=report, error=f"{type(e).__name__}: {e}"))
        raise
    await _remember(history, NightlyRunFinished(run_id=run_id, started_at=started_at, status="ok", steps=report,
                                                error=None))
    log.info("nightly pipeline: %s", report)
    return report


async def _generate(store: HardCaseStore, generator: Generator) -> dict[str, Any]:
    generator.load()
    try:
        g = await generate_candidates(store, generator, SamplingSpec())
    finally:
        generator.unload()
    return {"groups_new": g.groups_new, "candidates": g.candidates}


async def _claim(history: Callable[[], AbstractAsyncContextManager[EventLog]], claim: NightClaimed) -> bool:
    """Whether this run took the night: the log appends one claim per night (its id is the night's) and
    serialises appends, so of two instances claiming at once exactly one records it."""
    async with history() as unit:
        return bool(await unit.record([claim]))


async def _remember(history: Callable[[], AbstractAsyncContextManager[EventLog]], run: NightlyRunFinished) -> None:
    """Append the run to the log (`flywheel rounds list` shows it). If even that fails, the scheduler's log is all
    there is, and it says so."""
    try:
        async with history() as unit:
            await unit.record([run])
    except Exception:
        log.exception("could not record the nightly run (%s, %s) in the log", run.status, run.error)
        if run.status == "ok":
            raise
