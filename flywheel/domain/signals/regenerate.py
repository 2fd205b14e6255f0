"""What a regeneration becomes: a judgement against the response and, once the new one is in, a pair."""

from __future__ import annotations

from collections.abc import Container
from datetime import timedelta
from typing import TYPE_CHECKING

from flywheel.domain.signals.judgement import OVERALL, Judgement
from flywheel.domain.signals.lineage import pair
from flywheel.domain.signals.records import FeedbackRecord, PreferencePair
from flywheel.domain.signals.rules import REGENERATE_PAIR

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def judge(g: PromptGroup, f: FeedbackRecord) -> Judgement:
    """A regeneration is against the response it replaces, overall."""
    return Judgement(OVERALL, False, "regenerate", f)


def regenerate_pair(g: PromptGroup, f: FeedbackRecord, disputed: Container[str]) -> PreferencePair | None:
    """regenerate_pair: regenerating prefers the new response over the one it replaced, if the user went on
    with it.

    Nothing while the new response is not in the group, or answers another prompt. Nothing if, within
    `regenerate_window_seconds` of the new response, the user regenerated it again, gave it a thumbs-down
    or rated it low (in any dimension); an objection after the window changes nothing. A thumbs-up or a
    high overall rating of the new response makes the pair accepted ("regenerated_then_accepted",
    `confidence_regenerate_accepted`, those events among its sources); without one it is pending
    ("regenerated_then_silent", `confidence_regenerate_silent`), decided after the window closes. Both at
    `margin_regenerate`."""
    original = g.interactions[f.interaction_id]
    new = g.interactions.get(str(f.payload["new_interaction_id"]))
    if new is None or not g.same_prompt(original.interaction_id, new.interaction_id):
        return None  # the new response is not here (yet): nothing to pair
    deadline = new.occurred_at + timedelta(seconds=g.config.regenerate_window_seconds)
    accepting: list[FeedbackRecord] = []
    for later in g.by_interaction.get(new.interaction_id, []):
        score = g.score(later) if later.type == "rating" else None
        thumbs = later.payload.get("value") if later.type == "thumbs" else None
        contrary = later.type == "regenerate" or thumbs == "down" or (score is not None and score <= g.low)
        if contrary and later.occurred_at <= deadline:
            return None  # the user went on regenerating or objected: the new response was not accepted either
        if thumbs == "up" or (score is not None and score >= g.high and later.payload.get("dimension") is None):
            accepting.append(later)
    c = g.config
    if accepting:
        return pair(g, rule=REGENERATE_PAIR, reason="regenerated_then_accepted", rejected=original,
                    chosen=new, chosen_text=new.response, events=[f, *accepting],
                    margin=c.margin_regenerate, confidence=c.confidence_regenerate_accepted,
                    user=f.user_id_hash, disputed=disputed)
    return pair(g, rule=REGENERATE_PAIR, reason="regenerated_then_silent", rejected=original,
                chosen=new, chosen_text=new.response, events=[f], margin=c.margin_regenerate,
                confidence=c.confidence_regenerate_silent, user=f.user_id_hash, disputed=disputed,
                status="pending", decided_after=deadline)
