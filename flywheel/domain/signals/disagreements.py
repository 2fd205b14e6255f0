"""Disagreements: conflicting judgements of one response, or opposite winners of one A/B pair, kept unresolved."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from flywheel.domain.signals.judgement import Judgement
from flywheel.domain.signals.lineage import consent
from flywheel.domain.signals.records import Disagreement, FeedbackRecord
from flywheel.domain.signals.rules import digest

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def disagreements(g: PromptGroup, judgements: Mapping[str, list[Judgement]]) -> tuple[Disagreement, ...]:
    """One disagreement per response judged both for and against within one aspect (every judgement of
    that aspect among its sources), and one per A/B pair that comparisons gave opposite winners; a tie next
    to a preference is a weaker claim, not a conflict. Each counts the distinct users behind it."""
    found: list[Disagreement] = []
    for iid, js in judgements.items():
        by_aspect: dict[str, list[Judgement]] = defaultdict(list)
        for j in js:
            by_aspect[j.aspect].append(j)
        conflicting = [j for aspect_js in by_aspect.values() if len({j.positive for j in aspect_js}) == 2
                       for j in aspect_js]
        if not conflicting:
            continue
        record = g.interactions[iid]
        events = [j.event for j in conflicting]
        sources = g.sources([], events)
        found.append(Disagreement(
            disagreement_id=digest("disagreement", iid, *sources), interaction_id=iid, other_interaction_id=None,
            kinds=tuple(sorted({j.kind for j in conflicting})), user_count=len({f.user_id_hash for f in events}),
            source_event_ids=sources, consent=consent([record], events)))

    # Opposite winners of the same A/B pair; a tie next to a preference is a weaker claim, not a conflict.
    by_pair: dict[tuple[str, str], list[FeedbackRecord]] = defaultdict(list)
    for f in g.feedback:
        if f.type == "comparison" and f.payload["strength"] != "tie":
            a, b = sorted((str(f.payload["chosen_interaction_id"]), str(f.payload["rejected_interaction_id"])),
                          key=lambda i: (g.interactions[i].position, i))
            by_pair[(a, b)].append(f)
    for (a, b), events in by_pair.items():
        if len({str(f.payload["chosen_interaction_id"]) for f in events}) < 2:
            continue
        sources = g.sources([], events)
        found.append(Disagreement(
            disagreement_id=digest("disagreement", a, b, *sources), interaction_id=a, other_interaction_id=b,
            kinds=("comparison_chosen", "comparison_rejected"), user_count=len({f.user_id_hash for f in events}),
            source_event_ids=sources, consent=consent([g.interactions[a], g.interactions[b]], events)))
    return tuple(found)  # derive sorts them (order_key)
