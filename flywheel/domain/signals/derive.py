"""Running the signal rules over a prompt group: tables of rules keyed by feedback type, and derive.

A group's records fall into units: what each feedback event's rules derive from it (its own records, and a
rating's pairs with the ratings before it), and what each interaction's judgements add up to (its
disagreements and hard cases). derive runs every unit; derive_units runs the units a Change names, which is
how a growing group is kept up to date at the cost of its new events (PromptGroup.add).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import TypeVar

from flywheel.domain.signals import comparison, edit, rating, regenerate, thumbs
from flywheel.domain.signals.config import SignalConfig
from flywheel.domain.signals.disagreements import disagreements
from flywheel.domain.signals.group import Change, PairKey, PromptGroup
from flywheel.domain.signals.hard_cases import hard_cases
from flywheel.domain.signals.judgement import Judgement
from flywheel.domain.signals.order import order_key
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
Judge = Callable[[PromptGroup, FeedbackRecord], Judgement | None]
EventRule = Callable[[PromptGroup, FeedbackRecord, Container[str]], Derived | None]
WindowRule = Callable[[PromptGroup, FeedbackRecord, Container[str]], Iterable[Derived]]
Unit = tuple[str, str]  # ("feedback", event id) or ("interaction", interaction id)
_K = TypeVar("_K", PreferencePair, KTOLabel, SFTSample, HardCase, Disagreement)

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
# Rules that read an event together with the events of its kind before it (PromptGroup.window), after its own.
WINDOW_RULES: Mapping[str, tuple[WindowRule, ...]] = {
    "rating": (rating.rating_pairs,),
}


class Reading:
    """One derive call's reading of a group's judgements: each interaction's judgements, the conflicts
    among them and the pairs compared both ways, worked out once for each interaction asked about.
    `iid in reading` says whether the interaction is disputed (the mark on every record it is part of)."""

    def __init__(self, g: PromptGroup) -> None:
        self._g = g
        self._judgements: dict[str, list[Judgement]] = {}
        self._conflicting: dict[str, list[Judgement]] = {}
        self._opposed: dict[str, list[PairKey]] = {}

    def judgements(self, iid: str) -> list[Judgement]:
        """Every judgement of the interaction's feedback, in event-log order."""
        found = self._judgements.get(iid)
        if found is None:
            found = self._judgements[iid] = [
                j for f in self._g.by_interaction.get(iid, ())
                if (judge := JUDGES.get(f.type)) is not None and (j := judge(self._g, f)) is not None]
        return found

    def conflicting(self, iid: str) -> list[Judgement]:
        """The judgements of the interaction in aspects where it was judged both for and against."""
        found = self._conflicting.get(iid)
        if found is None:
            by_aspect: dict[str, list[Judgement]] = defaultdict(list)
            for j in self.judgements(iid):
                by_aspect[j.aspect].append(j)
            found = self._conflicting[iid] = [j for js in by_aspect.values() if len({j.positive for j in js}) == 2
                                              for j in js]
        return found

    def opposed(self, iid: str) -> list[PairKey]:
        """The A/B pairs with the interaction that comparisons gave opposite winners."""
        found = self._opposed.get(iid)
        if found is None:
            found = self._opposed[iid] = sorted(
                key for key in self._g.compared.get(iid, ())
                if len({str(f.payload["chosen_interaction_id"]) for f in self._g.comparisons[key]}) == 2)
        return found

    def __contains__(self, iid: object) -> bool:
        return isinstance(iid, str) and bool(self.conflicting(iid) or self.opposed(iid))


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
