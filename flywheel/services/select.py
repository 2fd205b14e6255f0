"""SelectCandidates: score every unselected candidate group, keep the best (RSFT) and best-vs-worst pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from flywheel.domain.events import CandidatesSelected
from flywheel.ports import HardCaseStore, Progress
from sampling.selection import ScoredCandidate, Selection, SelectionConfig, length_bias, score_group, select
from sampling.verifiers import Scorer


@dataclass(frozen=True, slots=True, kw_only=True)
class SelectOutcome:
    groups: int
    sft_samples: int
    pairs: int
    reasons: dict[str, int]
    length_bias: dict[str, Any]
    not_judged: int = 0  # groups no configured scorer (or not the deciding one) applies to: left unselected


def selector_version(scorers: Sequence[Scorer], config: SelectionConfig) -> str:
    """Which scorers (name and version) and thresholds judged a group: part of the selection's identity."""
    return orjson.dumps({"scorers": sorted(f"{s.name}@{s.version}" for s in scorers), "config": asdict(config)},
                        option=orjson.OPT_SORT_KEYS).decode()


def selection_payload(selection: Selection) -> dict[str, Any]:
    return {
        "scores": [{"index": c.index, "scores": [asdict(s) for s in c.scores]} for c in selection.candidates],
        "sft": None if selection.sft is None else asdict(selection.sft),
        "pair": None if selection.pair is None else asdict(selection.pair),
        "margin": selection.margin,
        "best_index": selection.best_index,
        "worst_index": selection.worst_index,
        "reasons": list(selection.reasons),
    }


async def select_candidates(
    store: HardCaseStore, scorers: Sequence[Scorer], config: SelectionConfig, *,
    sample_id: str | None = None, progress: Progress | None = None,
    scorers_for: Callable[[list[dict[str, Any]]], Sequence[Scorer]] | None = None,
) -> SelectOutcome:
    """Score every candidate group without a selection, apply RSFT and best-vs-worst selection, and
    record one CandidatesSelected event per group (the full scored group stays for RM/GRPO use).
    `scorers_for(prompt)`: more scorers for one group (the verifiers of a checkable prompt). A group that
    no scorer applies to (or not the deciding one) is not judged, so a later run with other scorers can."""
    selections: list[Selection] = []
    not_judged = 0
    for group in await store.unselected(sample_id):
        group_scorers = [*scorers, *(scorers_for(group["prompt"]) if scorers_for else ())]
        names = {s.name for s in group_scorers}
        if not names or (config.scorer is not None and config.scorer not in names):
            not_judged += 1
            if progress:
                progress(1)
            continue
        scored: tuple[ScoredCandidate, ...] = score_group(group_scorers, group["prompt"],
                                                          [c["text"] for c in group["candidates"]])
        selection = select(group["prompt"], scored, config)
        version = selector_version(group_scorers, config)
        await store.record([CandidatesSelected(group_id=group["group_id"], selector_version=version,
                                               selection=selection_payload(selection))])
        selections.append(selection)
        if progress:
            progress(1)
    reasons: dict[str, int] = {}
    for s in selections:
        for r in s.reasons:
            reasons[r] = reasons.get(r, 0) + 1
    return SelectOutcome(groups=len(selections), sft_samples=sum(s.sft is not None for s in selections),
                         pairs=sum(s.pair is not None for s in selections), reasons=reasons,
                         length_bias=asdict(length_bias(selections)), not_judged=not_judged)
