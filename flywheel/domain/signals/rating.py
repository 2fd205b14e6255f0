"""What ratings become: a judgement and a KTO label at either end of the scale, and pairs across a gap."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
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


def rating_label(g: PromptGroup, f: FeedbackRecord, disputed: set[str]) -> KTOLabel | None:
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


def rating_pairs(g: PromptGroup, disputed: set[str]) -> Iterator[PreferencePair]:
    """rating_pair: of two responses to the same prompt rated by one user on one dimension, the higher rated
    is preferred when the normalised scores are at least `rating_pair_min_gap` apart.

    Reason "rating_gap", the gap as margin, at `confidence_rating_pair`, with the dimension; ratings by
    different users or on different dimensions are never compared."""
    # Only ratings by the same user on the same dimension are compared: people use a scale differently.
    by_rater: dict[tuple[str, str | None], list[tuple[FeedbackRecord, Fraction]]] = defaultdict(list)
    for f in g.feedback:
        if f.type == "rating" and (score := g.score(f)) is not None:
            by_rater[(f.user_id_hash, f.payload.get("dimension"))].append((f, score))
    min_gap = Fraction(repr(float(g.config.rating_pair_min_gap)))
    for (user, dimension), rated in by_rater.items():
        for n, (fa, sa) in enumerate(rated):
            for fb, sb in rated[n + 1:]:
                if not g.same_prompt(fa.interaction_id, fb.interaction_id) or abs(sa - sb) < min_gap:
                    continue
                (hi, _), (lo, _) = ((fa, sa), (fb, sb)) if sa > sb else ((fb, sb), (fa, sa))
                chosen, rejected = g.interactions[hi.interaction_id], g.interactions[lo.interaction_id]
                yield pair(g, rule=RATING_PAIR, reason="rating_gap", rejected=rejected, chosen=chosen,
                           chosen_text=chosen.response, events=[fa, fb], margin=float(abs(sa - sb)),
                           confidence=g.config.confidence_rating_pair, user=user, disputed=disputed,
                           dimension=dimension)
