"""What ratings become: a judgement and a KTO label at either end of the scale, and pairs across a gap."""

from __future__ import annotations

from collections.abc import Container, Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

from flywheel.domain.signals.judgement import OVERALL, Judgement
from flywheel.domain.signals.lineage import label, pair
from flywheel.domain.signals.records import FeedbackRecord, KTOLabel, PreferencePair
from flywheel.domain.signals.rules import RATING_LABEL, RATING_PAIR

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def judge(g: PromptGroup, f: FeedbackRecord) -> Judgement | None:
    """A high rating is for the response, a low one against it, within its dimension (overall without one);
    the middle of the scale says nothing."""
    score = g.score(f)
    if score is None or g.low < score < g.high:
        return None
    dimension = f.payload.get("dimension")
    positive = score >= g.high
    kind = "rating_high" if positive else "rating_low"
    # A low "tone" rating does not contradict a thumbs-up; a low overall rating does.
    aspect = OVERALL if dimension is None else f"dimension:{dimension}"
    return Judgement(aspect, positive, kind if dimension is None else f"{kind}:{dimension}", f)


def rating_label(g: PromptGroup, f: FeedbackRecord, disputed: Container[str]) -> KTOLabel | None:
    """rating_label: a high rating labels the response desirable, a low one undesirable.

    Scores are compared normalised to 0..1, so a rating on any scale is judged like one on `rating_scale`:
    at or above `rating_desirable_min` is high ("rating_high"), at or below `rating_undesirable_max` low
    ("rating_low"); the middle of the scale and a one-point scale give nothing. The label keeps the rating's
    dimension, at `confidence_rating`."""
    score = g.score(f)
    if score is None or g.low < score < g.high:
        return None  # the middle of the scale is neither desirable nor undesirable
    high = score >= g.high
    return label(g, rule=RATING_LABEL, reason="rating_high" if high else "rating_low", f=f,
                 desirable=high, confidence=g.config.confidence_rating, disputed=disputed,
                 dimension=f.payload.get("dimension"))


def rating_pairs(g: PromptGroup, f: FeedbackRecord, disputed: Container[str]) -> Iterator[PreferencePair]:
    """rating_pair: of two responses to the same prompt rated by one user on one dimension, the higher rated
    is preferred when the normalised scores are at least `rating_pair_min_gap` apart.

    A rating is compared with the same user's latest `rating_pair_window` ratings on its dimension in the
    group before it (PromptGroup.window), so a rater's pairs grow with their ratings, not with their square.
    Reason "rating_gap", the gap as margin, at `confidence_rating_pair`, with the dimension; ratings by
    different users or on different dimensions are never compared: people use a scale differently."""
    score = g.score(f)
    if score is None:
        return
    min_gap = Fraction(repr(float(g.config.rating_pair_min_gap)))
    for earlier in g.window(f):
        earlier_score = g.score(earlier)
        assert earlier_score is not None  # the window holds only ratings with a score
        if not g.same_prompt(f.interaction_id, earlier.interaction_id) or abs(score - earlier_score) < min_gap:
            continue
        hi, lo = (f, earlier) if score > earlier_score else (earlier, f)
        chosen, rejected = g.interactions[hi.interaction_id], g.interactions[lo.interaction_id]
        yield pair(g, rule=RATING_PAIR, reason="rating_gap", rejected=rejected, chosen=chosen,
                   chosen_text=chosen.response, events=[earlier, f], margin=float(abs(score - earlier_score)),
                   confidence=g.config.confidence_rating_pair, user=f.user_id_hash, disputed=disputed,
                   dimension=f.payload.get("dimension"))
