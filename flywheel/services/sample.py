"""SampleHardCases: choose the prompts worth generating for, as the log stood at a watermark, and record them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.domain.events import HardCasesSampled
from flywheel.domain.messages import turns_text
from flywheel.domain.rounds import QuarantineIndex, RoundConfig
from flywheel.domain.rounds.rollback import in_slice
from flywheel.ports import HardCaseSampling, HardCaseStore, Progress
from sampling.hardcases import PromptCandidate, SampledHardCases, SamplerConfig, sample


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleOutcome:
    sample_id: str
    new: bool  # False: this exact sample (config, seed, watermark, quarantine list) was already recorded
    result: SampledHardCases
    # prompts whose text holds a quarantine item, and interactions in a rolled-back slice: both left out
    contaminated: int = 0
    sliced: int = 0
    quarantine_version: str = ""  # "": the list was empty
    contaminated_items: dict[str, int] = field(default_factory=dict)  # item id -> prompts it was found in


async def sample_hard_cases(
    store: HardCaseStore, config: SamplerConfig, *, watermark: int | None = None,
    quarantined: frozenset[str] = frozenset(), round_config: RoundConfig | None = None,
    progress: Progress | None = None,
) -> SampleOutcome:
    """Choose hard cases as the log stood at `watermark` (default: as far as signals are derived) and
    record them as one HardCasesSampled event.

    The quarantine list applies as it does to a round build (`round_config`'s contamination settings, default
    RoundConfig()): a prompt whose text holds a quarantine item is left out, and so is every prompt with an
    interaction in a slice a rollback quarantined. `quarantined`: further prompt keys or interaction ids to leave
    out."""
    derived = await store.signals_checkpoint()
    if watermark is None:
        watermark = derived
    elif watermark > derived:
        raise ValueError(f"watermark {watermark} is past the signals projector ({derived}): wait or lower it")
    async with store.sampling() as unit:
        candidates, prompts = await unit.prompt_candidates(watermark)
        if progress:
            progress(len(candidates))
        version, items, contaminated, sliced = await _left_out(unit, candidates, prompts, round_config or RoundConfig())
        result = sample(candidates, config, watermark=watermark,
                        quarantined=quarantined | contaminated | sliced)
        event = HardCasesSampled.of_result(result, config, prompts, quarantine_version=version)
        stored = await unit.record([event])
    return SampleOutcome(sample_id=event.event_id, new=bool(stored), result=result, contaminated=len(contaminated),
                         sliced=len(sliced), quarantine_version=version, contaminated_items=items)


async def _left_out(unit: HardCaseSampling, candidates: Sequence[PromptCandidate],
                    prompts: dict[str, list[dict[str, Any]]], config: RoundConfig,
                    ) -> tuple[str, dict[str, int], frozenset[str], frozenset[str]]:
    """(the quarantine list's version ("" when it is empty), prompts per quarantine item found, the prompt keys
    holding an item, the interaction ids in a rolled-back slice). The prompt is the
    conversation's text as a round row holds it, matched by the round build's contamination index."""
    quarantine = await unit.quarantine()
    if not quarantine.items.items and not quarantine.slices:
        return "", {}, frozenset(), frozenset()
    contaminated: set[str] = set()
    per_item: Counter[str] = Counter()
    if quarantine.items.items:
        index = QuarantineIndex.for_config(quarantine.items, config)
        for c in candidates:
            if found := index.hits(turns_text(prompts[c.prompt_key])):
                contaminated.add(c.prompt_key)
                per_item.update(found)
    sliced: frozenset[str] = frozenset()
    if quarantine.slices:
        ids = sorted({i for c in candidates for i in c.interaction_ids})
        sliced = frozenset(f.interaction_id for f in await unit.interaction_facts(ids)
                           if in_slice(f.occurred_at, f.app_id, f.model_version, f.prompt_version, quarantine.slices))
    return quarantine.version, dict(sorted(per_item.items())), frozenset(contaminated), sliced
