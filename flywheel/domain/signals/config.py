"""The thresholds, margins and confidences of the signal rules."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import orjson


@dataclass(frozen=True, kw_only=True)
class SignalConfig:
    """Thresholds, margins and confidences of the signal rules; `version()` names a set of values."""

    # Normalised Levenshtein distance (0..1, after folding case and whitespace) below which an edit is trivial.
    edit_min_distance: float = 0.15
    # A regenerated response nobody objected to within this many seconds counts as accepted.
    regenerate_window_seconds: float = 600
    # The two rating thresholds are written on a 1..rating_scale scale and compared on the normalised
    # score (score - 1) / (scale - 1), so a 7-point or 10-point rating is judged like a 5-point one.
    rating_scale: int = 5
    rating_desirable_min: int = 4
    rating_undesirable_max: int = 2
    rating_pair_min_gap: float = 0.5  # on the normalised 0..1 score: 2 points on a 5-point scale
    # A rating is compared with at most this many earlier ratings by the same rater on the same dimension in
    # its prompt group (the latest ones), so the pairs, and the work, per new rating are bounded.
    rating_pair_window: int = 8
    margin_edit: float = 1.0
    margin_regenerate: float = 0.5
    margin_much: float = 1.0
    margin_slightly: float = 0.5
    confidence_edit: float = 0.9
    confidence_regenerate_accepted: float = 0.6  # a thumbs-up (or high overall rating) on the new response
    confidence_regenerate_silent: float = 0.4  # nothing said against the new response within the window
    confidence_thumbs: float = 0.8
    confidence_rating: float = 0.7
    confidence_rating_pair: float = 0.6
    confidence_comparison_much: float = 0.9
    confidence_comparison_slightly: float = 0.7
    confidence_comparison_tie: float = 0.6

    def __post_init__(self) -> None:
        values = asdict(self)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
            if (name.startswith("confidence_") or name in ("edit_min_distance", "rating_pair_min_gap")) and not (
                0.0 <= value <= 1.0
            ):
                raise ValueError(f"{name} must be within 0..1")
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.rating_pair_window < 1:
            raise ValueError("rating_pair_window must be >= 1")
        if self.rating_scale < 2:
            raise ValueError("rating_scale must be >= 2")
        if not 1 <= self.rating_undesirable_max < self.rating_desirable_min <= self.rating_scale:
            raise ValueError("need 1 <= rating_undesirable_max < rating_desirable_min <= rating_scale")

    def version(self) -> str:
        """A short hash of the values: equal configs (600 or 600.0) give the same version."""
        canonical = {k: float(v) for k, v in sorted(asdict(self).items())}
        return hashlib.sha256(orjson.dumps(canonical)).hexdigest()[:12]
