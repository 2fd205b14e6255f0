"""Running the signal rules over one prompt group: tables of rules keyed by feedback type, and derive."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

from flywheel.domain.signals import comparison, edit, rating, regenerate, thumbs
from flywheel.domain.signals.config import SignalConfig
from flywheel.domain.signals.disagreements import disagreements as find_disagreements
from flywheel.domain.signals.group import PromptGroup
from flywheel.domain.signals.hard_cases import hard_cases
from flywheel.domain.signals.judgement import Judgement
from flywheel.domain.signals.order import order_key
from flywheel.domain.signals.records import (
    FeedbackRecord,
    InteractionRecord,
    KTOLabel,
    PreferencePair,
    Record,
    SFTSample,
    Signals,
)

Derived = PreferencePair | KTOLabel | SFTSample
Judge = Callable[[PromptGroup, FeedbackRecord], Judgement | None]
EventRule = Callable[[PromptGroup, FeedbackRecord, set[str]], Derived | None]
GroupRule = Callable[[PromptGroup, set[str]], Iterable[Derived]]

# How an event of each type reads as for or against the one response it is about. A comparison is relative
# to the other response: it judges neither alone.
JUDGES: Mapping[str, Judge] = {
    "thumbs": thumbs.judge,
    "edit": edit.judge,
    "regenerate": regenerate.judge,
    "rating": rating.judge,
}
# The rules each feedback event runs, by its type, in this order.
EVENT_HANDLERS: Mapping[str, tuple[EventRule, ...]] = {
    "thumbs": (thumbs.thumbs_label,),
    "edit": (edit.edit_pair, edit.edit_sft),
    "regenerate": (regenerate.regenerate_pair,),
    "rating": (rating.rating_label,),
    "comparison": (comparison.comparison_pair,),
}
# Rules that read several events of the group together, after every event's own rules.
GROUP_RULES: tuple[GroupRule, ...] = (rating.rating_pairs,)


def derive(interactions: Sequence[InteractionRecord], feedback: Sequence[FeedbackRecord],
           config: SignalConfig) -> Signals:
    """Everything the signal rules make of one prompt group.

    A pure function of the SET of inputs: input order and repeated rows do not change the output, which is
    sorted by event-log position. Conflicting judgements are all kept and marked, never resolved.
    """
    g = PromptGroup(interactions, feedback, config)
    judgements = _judgements(g)
    disagreements = find_disagreements(g, judgements)
    disputed = {d.interaction_id for d in disagreements} | {
        d.other_interaction_id for d in disagreements if d.other_interaction_id is not None}

    derived: list[Derived] = []
    for f in g.feedback:
        for rule in EVENT_HANDLERS[f.type]:
            if (record := rule(g, f, disputed)) is not None:
                derived.append(record)
    for group_rule in GROUP_RULES:
        derived.extend(group_rule(g, disputed))

    def ordered(record: Record) -> bytes:
        return order_key(record, g.positions, g.interaction_positions)

    return Signals(
        pairs=tuple(sorted((r for r in derived if isinstance(r, PreferencePair)), key=ordered)),
        kto_labels=tuple(sorted((r for r in derived if isinstance(r, KTOLabel)), key=ordered)),
        sft_samples=tuple(sorted((r for r in derived if isinstance(r, SFTSample)), key=ordered)),
        hard_cases=tuple(sorted(hard_cases(g, judgements, disagreements), key=ordered)),
        disagreements=tuple(sorted(disagreements, key=ordered)),
    )


def _judgements(g: PromptGroup) -> dict[str, list[Judgement]]:
    """Every judgement of the group's feedback, by the interaction it judges, in event-log order."""
    out: dict[str, list[Judgement]] = defaultdict(list)
    for f in g.feedback:
        judge = JUDGES.get(f.type)
        if judge is not None and (j := judge(g, f)) is not None:
            out[f.interaction_id].append(j)
    return out
