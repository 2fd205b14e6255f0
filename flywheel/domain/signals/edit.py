"""What a user's edit of a response becomes: a pair (edited over original) and an SFT sample, if substantive."""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from rapidfuzz.distance import Levenshtein

from flywheel.domain.signals.judgement import OVERALL, Judgement
from flywheel.domain.signals.lineage import consent, pair, prompt, tags
from flywheel.domain.signals.records import FeedbackRecord, PreferencePair, SFTSample
from flywheel.domain.signals.rules import EDIT_PAIR, EDIT_SFT, RULES, record_id

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def edit_distance(before: str, after: str) -> float:
    """Normalised Levenshtein distance (0..1) after folding case and whitespace runs."""
    return float(Levenshtein.normalized_distance(_fold(before), _fold(after)))


def substantive(g: PromptGroup, f: FeedbackRecord) -> bool:
    """Whether an edit changes the response: more than case and whitespace, and by at least
    `edit_min_distance`. A trivial edit says nothing, for or against."""
    known = g.substantive_edits.get(f.event_id)
    if known is None:
        known = g.substantive_edits[f.event_id] = _is_substantive(g, f)
    return known


def _is_substantive(g: PromptGroup, f: FeedbackRecord) -> bool:
    original = g.interactions[f.interaction_id].response
    edited = str(f.payload["edited_response"])
    if _fold(original) == _fold(edited):
        return False
    return edit_distance(original, edited) >= g.config.edit_min_distance


def judge(g: PromptGroup, f: FeedbackRecord) -> Judgement | None:
    """A substantive edit is against the response, overall."""
    return Judgement(OVERALL, False, "edit", f) if substantive(g, f) else None


def edit_pair(g: PromptGroup, f: FeedbackRecord, disputed: Container[str]) -> PreferencePair | None:
    """edit_pair: a substantive edit prefers the user's text over the response they edited.

    The chosen side is the edited text (no interaction produced it), the rejected one the original response;
    reason "edited_substantively", `margin_edit`, `confidence_edit`, judged by the editing user. A trivial
    edit gives nothing."""
    if not substantive(g, f):
        return None
    original = g.interactions[f.interaction_id]
    edited = str(f.payload["edited_response"])
    return pair(g, rule=EDIT_PAIR, reason="edited_substantively", rejected=original, chosen=None,
                chosen_text=edited, events=[f], margin=g.config.margin_edit,
                confidence=g.config.confidence_edit, user=f.user_id_hash, disputed=disputed)


def edit_sft(g: PromptGroup, f: FeedbackRecord, disputed: Container[str]) -> SFTSample | None:
    """edit_sft: a substantive edit is also a target response: the prompt, then the edited text as the
    assistant's turn, at `confidence_edit`. A trivial edit gives nothing."""
    if not substantive(g, f):
        return None
    original = g.interactions[f.interaction_id]
    edited = str(f.payload["edited_response"])
    sources = g.sources([original], [f])
    return SFTSample(
        sample_id=record_id(EDIT_SFT, sources), rule=EDIT_SFT, rule_version=RULES[EDIT_SFT],
        messages=(*prompt(original), {"role": "assistant", "content": edited}),
        interaction_id=original.interaction_id, source_event_ids=sources, app_id=original.app_id,
        model_version=original.model_version, prompt_version=original.prompt_version, tags=tags(original),
        confidence=g.config.confidence_edit, disagreement=original.interaction_id in disputed,
        consent=consent([original], [f]), user_id_hash=f.user_id_hash, tools=original.tools,
    )
