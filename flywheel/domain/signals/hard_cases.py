"""Hard cases: responses worth sampling again because users rejected, rewrote or disputed them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from flywheel.domain.signals.judgement import Judgement
from flywheel.domain.signals.lineage import consent
from flywheel.domain.signals.records import Disagreement, HardCase
from flywheel.domain.signals.rules import digest

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def hard_cases(g: PromptGroup, judgements: Mapping[str, list[Judgement]],
               disagreements: Sequence[Disagreement]) -> tuple[HardCase, ...]:
    """One hard case per response and reason: a thumbs-down, a low rating (in any dimension), a substantive
    edit, a regeneration, or a disagreement it is part of; every event behind that reason among its sources."""
    events: dict[tuple[str, str], set[str]] = defaultdict(set)
    reason_of = {"thumbs_down": "thumbs_down", "edit": "edited", "regenerate": "regenerated"}
    for iid, js in judgements.items():
        for j in js:
            if j.positive:
                continue
            reason = reason_of.get(j.kind, "low_rating")
            events[(iid, reason)].add(j.event.event_id)
    for d in disagreements:
        for disputed in (d.interaction_id, d.other_interaction_id):
            if disputed is not None:
                events[(disputed, "disagreement")].update(d.source_event_ids)
    by_id = {f.event_id: f for f in g.feedback}
    cases = []
    for (iid, reason), ids in events.items():
        record = g.interactions[iid]
        sources = g.sources([], [by_id[e] for e in ids])
        cases.append(HardCase(
            case_id=digest("hard_case", reason, iid, *sources), interaction_id=iid, reason=reason,
            source_event_ids=sources, app_id=record.app_id, model_version=record.model_version,
            prompt_version=record.prompt_version, consent=consent([record], [by_id[e] for e in ids]),
        ))
    return tuple(cases)  # derive sorts them (order_key)
