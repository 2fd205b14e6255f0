"""What an explicit A/B comparison of two responses becomes: a pair with a margin, or a tie."""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from flywheel.domain.signals.lineage import pair
from flywheel.domain.signals.records import FeedbackRecord, PreferencePair
from flywheel.domain.signals.rules import COMPARISON_PAIR

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def comparison_pair(g: PromptGroup, f: FeedbackRecord, disputed: Container[str]) -> PreferencePair | None:
    """comparison_pair: the response the user chose over the one they rejected, when both answer the same
    prompt; an A/B of two different prompts prefers nothing.

    "much": `margin_much` at `confidence_comparison_much`; "slightly": `margin_slightly` at
    `confidence_comparison_slightly`; a tie stays a tie (margin 0, `confidence_comparison_tie`). Reason
    "explicit_comparison_" and the strength. A comparison judges two responses relative to each other, so it
    gives no judgement of either alone."""
    chosen = g.interactions[str(f.payload["chosen_interaction_id"])]
    rejected = g.interactions[str(f.payload["rejected_interaction_id"])]
    if not g.same_prompt(chosen.interaction_id, rejected.interaction_id):
        return None  # an A/B of two different prompts prefers nothing
    c = g.config
    strength = str(f.payload["strength"])
    margin, confidence = {
        "much": (c.margin_much, c.confidence_comparison_much),
        "slightly": (c.margin_slightly, c.confidence_comparison_slightly),
    }.get(strength, (0.0, c.confidence_comparison_tie))
    return pair(g, rule=COMPARISON_PAIR, reason=f"explicit_comparison_{strength}", rejected=rejected,
                chosen=chosen, chosen_text=chosen.response, events=[f], margin=margin,
                confidence=confidence, user=f.user_id_hash, disputed=disputed, tie=strength == "tie")
