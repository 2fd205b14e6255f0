"""Running the signal rules over a prompt group: tables of rules keyed by feedback type, and derive.

A group's records fall into units: what each feedback event's rules derive from it (its own records, and a
rating's pairs with the ratings before it), and what each interaction's judgements add up to (its
disagreements and hard cases). derive runs every unit; derive_units runs the units a Change names, which is
how a growing group is kept up to date at the cost of its new events (PromptGroup.add).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import TypeVar

from flywheel.domain.signals import comparison, edit, rating, regenerate, thumbs
from flywheel.domain.signals.config import SignalConfig
from flywheel.domain.signals.disagreements import disagreements
from flywheel.domain.signals.group import Change, PromptGroup
from flywheel.domain.signals.hard_cases import hard_cases
from flywheel.domain.signals.order import order_key
from flywheel.domain.signals.reading import Reading
from flywheel.domain.signals.records import (
    Disagreement,
    FeedbackRecord,
    HardCase,
    InteractionRecord,
    KTOLabel,
    PreferencePair,
    Record,
    SFTSample,
    Signals,
)

Derived = PreferencePair | KTOLabel | SFTSample
EventRule = Callable[[PromptGroup, FeedbackRecord, Container[str]], Derived | None]
WindowRule = Callable[[PromptGroup, FeedbackRecord, Container[str]], Iterable[Derived]]
Unit = tuple[str, str]  # ("feedback", event id) or ("interaction", interaction id)
_K = TypeVar("_K", PreferencePair, KTOLabel, SFTSample, HardCase, Disagreement)

# The rules each feedback event runs, by its type, in this order.
EVENT_HANDLERS: Mapping[str, tuple[EventRule, ...]] = {
    "thumbs": (thumbs.thumbs_label,),
    "edit": (edit.edit_pair, edit.edit_sft),
    "regenerate": (regenerate.regenerate_pair,),
    "rating": (rating.rating_label,),
    "comparison": (comparison.comparison_pair,),
}
# Rules that read an event together with the events of its kind before it (PromptGroup.window), after its own.
WINDOW_RULES: Mapping[str, tuple[WindowRule, ...]] = {
    "rating": (rating.rating_pairs,),
}


def derive(interactions: Sequence[InteractionRecord], feedback: Sequence[FeedbackRecord],
           config: SignalConfig) -> Signals:
    """Everything the signal rules make of one prompt group.

    A pure function of the SET of inputs: input order and repeated rows do not change the output, which is
    sorted by event-log position. Conflicting judgements are all kept and marked, never resolved.
    """
    return derive_group(PromptGroup(interactions, feedback, config))


def derive_group(g: PromptGroup) -> Signals:
    """derive, of a group already read in."""
    return signals(g, [r for records in derive_units(g, g.everything()).values() for r in records])


def derive_units(g: PromptGroup, change: Change) -> dict[Unit, list[Record]]:
    """The records of each unit that `change` names, by unit (see the module's docstring). Over
    g.everything() these are derive's records; after g.add, the records of the units it returned replace
    those units' earlier records, and every other unit's records stand."""
    reading = Reading(g)
    out: dict[Unit, list[Record]] = {}
    for f in change.feedback:
        records: list[Record] = [r for rule in EVENT_HANDLERS[f.type] if (r := rule(g, f, reading)) is not None]
        for window_rule in WINDOW_RULES.get(f.type, ()):
            records.extend(window_rule(g, f, reading))
        out[("feedback", f.event_id)] = records
    for iid in change.interactions:
        found = disagreements(g, reading, iid)
        out[("interaction", iid)] = [*found, *hard_cases(g, reading, iid)]
    return out


def signals(g: PromptGroup, records: Iterable[Record]) -> Signals:
    """Records as Signals: by kind, each kind in derive's order."""
    records = list(records)

    def ordered(kind: type[_K]) -> tuple[_K, ...]:
        return tuple(sorted((r for r in records if isinstance(r, kind)),
                            key=lambda r: order_key(r, g.positions, g.interaction_positions)))

    return Signals(pairs=ordered(PreferencePair), kto_labels=ordered(KTOLabel), sft_samples=ordered(SFTSample),
                   hard_cases=ordered(HardCase), disagreements=ordered(Disagreement))
