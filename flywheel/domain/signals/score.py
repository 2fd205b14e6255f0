"""A rating on a common scale: its score normalised to 0..1, and where desirable and undesirable begin."""

from __future__ import annotations

import functools
from fractions import Fraction

from flywheel.domain.signals.config import SignalConfig


@functools.lru_cache(maxsize=1024)  # a few scales and scores recur: a Fraction is slow to make, and immutable
def normalised_score(score: int, scale: int) -> Fraction | None:
    """(score - 1) / (scale - 1) as an exact fraction; None for a one-point scale, which says nothing."""
    if scale < 2 or not 1 <= score <= scale:
        return None
    return Fraction(score - 1, scale - 1)


@functools.lru_cache(maxsize=64)
def bounds(config: SignalConfig) -> tuple[Fraction, Fraction]:
    """The normalised scores at and below which a rating is undesirable, at and above which desirable."""
    return (Fraction(config.rating_undesirable_max - 1, config.rating_scale - 1),
            Fraction(config.rating_desirable_min - 1, config.rating_scale - 1))
