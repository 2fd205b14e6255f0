"""Disagreements: conflicting judgements of one response, or opposite winners of one A/B pair, kept unresolved."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywheel.domain.signals.lineage import consent
from flywheel.domain.signals.records import Disagreement
from flywheel.domain.signals.rules import digest

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup
    from flywheel.domain.signals.reading import Reading


def disagreements(g: PromptGroup, reading: Reading, iid: str) -> list[Disagreement]:
    """The interaction's disagreements: one if it was judged both for and against within one aspect (every
    judgement of that aspect among its sources), and one per A/B pair it comes first in that comparisons gave
    opposite winners; a tie next to a preference is a weaker claim, not a conflict. Each counts the distinct
    users behind it."""
    found: list[Disagreement] = []
    if conflicting := reading.conflicting(iid):
        record = g.interactions[iid]
        events = [j.event for j in conflicting]
        sources = g.sources([], events)
        found.append(Disagreement(
            disagreement_id=digest("disagreement", iid, *sources), interaction_id=iid, other_interaction_id=None,
            kinds=tuple(sorted({j.kind for j in conflicting})), user_count=len({f.user_id_hash for f in events}),
            source_event_ids=sources, consent=consent([record], events)))
    for a, b in reading.opposed(iid):
        if a != iid:
            continue  # the pair's first interaction holds it
        events = g.comparisons[(a, b)]
        sources = g.sources([], events)
        found.append(Disagreement(
            disagreement_id=digest("disagreement", a, b, *sources), interaction_id=a, other_interaction_id=b,
            kinds=("comparison_chosen", "comparison_rejected"), user_count=len({f.user_id_hash for f in events}),
            source_event_ids=sources, consent=consent([g.interactions[a], g.interactions[b]], events)))
    return found  # derive sorts them (order_key)
