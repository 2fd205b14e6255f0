"""SampleHardCases: choose the prompts worth generating for, as the log stood at a watermark, and record them."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.domain.events import HardCasesSampled
from flywheel.ports import HardCaseStore, Progress
from sampling.hardcases import SampledHardCases, SamplerConfig, sample


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleOutcome:
    sample_id: str
    new: bool  # False: this exact sample (config, seed, watermark) was already recorded
    result: SampledHardCases


async def sample_hard_cases(
    store: HardCaseStore, config: SamplerConfig, *, watermark: int | None = None,
    quarantined: frozenset[str] = frozenset(), progress: Progress | None = None,
) -> SampleOutcome:
    """Choose hard cases as the log stood at `watermark` (default: as far as signals are derived) and
    record them as one HardCasesSampled event."""
    derived = await store.signals_checkpoint()
    if watermark is None:
        watermark = derived
    elif watermark > derived:
        raise ValueError(f"watermark {watermark} is past the signals projector ({derived}): wait or lower it")
    async with store.sampling() as unit:
        candidates, prompts = await unit.prompt_candidates(watermark)
        if progress:
            progress(len(candidates))
        result = sample(candidates, config, watermark=watermark, quarantined=quarantined)
        event = HardCasesSampled.of_result(result, config, prompts)
        stored = await unit.record([event])
    return SampleOutcome(sample_id=event.event_id, new=bool(stored), result=result)
