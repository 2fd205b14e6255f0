"""Hard cases: responses worth sampling again because users rejected, rewrote or disputed them."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from flywheel.domain.signals.lineage import consent
from flywheel.domain.signals.records import FeedbackRecord, HardCase
from flywheel.domain.signals.rules import digest

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup
    from flywheel.domain.signals.reading import Reading

_REASON_OF = {"thumbs_down": "thumbs_down", "edit": "edited", "regenerate": "regenerated"}


def hard_cases(g: PromptGroup, reading: Reading, iid: str) -> list[HardCase]:
    """One hard case of the interaction per reason: a thumbs-down, a low rating (in any dimension), a
    substantive edit, a regeneration, or a disagreement it is part of; every event behind that reason among
    its sources."""
    events: dict[str, dict[str, FeedbackRecord]] = defaultdict(dict)
    for j in reading.judgements(iid):
        if not j.positive:
            events[_REASON_OF.get(j.kind, "low_rating")][j.event.event_id] = j.event
    disputing = [j.event for j in reading.conflicting(iid)]
    disputing.extend(f for key in reading.opposed(iid) for f in g.comparisons[key])
    if disputing:
        events["disagreement"].update((f.event_id, f) for f in disputing)
    record = g.interactions[iid]
    cases = []
    for reason, by_id in events.items():
        sources = g.sources([], by_id.values())
        cases.append(HardCase(
            case_id=digest("hard_case", reason, iid, *sources), interaction_id=iid, reason=reason,
            source_event_ids=sources, app_id=record.app_id, model_version=record.model_version,
            prompt_version=record.prompt_version, consent=consent([record], by_id.values()),
        ))
    return cases  # derive sorts them (order_key)
