"""How one derive call reads a prompt group's judgements: each interaction's, the conflicts among them, and the
pairs compared both ways (what marks a record disputed and makes hard cases and disagreements)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

from flywheel.domain.signals import edit, rating, regenerate, thumbs
from flywheel.domain.signals.group import PairKey, PromptGroup
from flywheel.domain.signals.judgement import Judgement
from flywheel.domain.signals.records import FeedbackRecord

Judge = Callable[[PromptGroup, FeedbackRecord], Judgement | None]

# How an event of each type reads as for or against the one response it is about. A comparison is relative
# to the other response: it judges neither alone.
JUDGES: Mapping[str, Judge] = {
    "thumbs": thumbs.judge,
    "edit": edit.judge,
    "regenerate": regenerate.judge,
    "rating": rating.judge,
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
