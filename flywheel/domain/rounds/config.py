"""Round builder configuration: contamination, quality, distribution cap and split parameters."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.domain.rounds.rows import KINDS, Kind

SEMANTIC_MODEL = "all-MiniLM-L6-v2"
SEMANTIC_THRESHOLD = 0.65
BUILDER_VERSION = 2  # bump whenever the same rows and config would give different files
# 2: the PII gate checks each string of a row on its own (1 scanned them joined by NUL, which could find more).


@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """Every knob of a round build; `version()` names a set of values (with the builder version)."""

    kinds: tuple[Kind, ...] = KINDS  # the kinds a round contains; other rows are counted and left out
    # Contamination: exact word n-gram overlap, and near duplicates by MinHash LSH on word shingles.
    ngram: int = 13
    # Quarantine texts with fewer normalised words than this are not indexed: a one-word answer ("Paris") would
    # flag every row that mentions it. Texts between this and `ngram` words must appear whole.
    min_item_words: int = 8
    shingle_words: int = 3
    minhash_threshold: float = 0.7
    num_perm: int = 256  # 256, not 128: halves the variance of the Jaccard estimate that confirms a hit
    minhash_seed: int = 1
    # Semantic near duplicates (paraphrases) by sentence embeddings: see flywheel.domain.rounds.semantic. Off unless
    # asked (FLYWHEEL_SEMANTIC_CHECK): the embedder needs torch, which only the generation virtualenv carries. The
    # threshold is chosen by bench/paraphrase.py on the project's labelled paraphrase set.
    semantic: bool = False
    semantic_model: str = SEMANTIC_MODEL
    semantic_threshold: float = SEMANTIC_THRESHOLD
    # Quality: per text; see flywheel.domain.rounds.quality.quality_reason.
    min_chars: int = 1
    max_chars: int = 50_000
    max_garbled_share: float = 0.1
    # Distribution cap: see flywheel.domain.rounds.distribution_cap.DistributionCap.
    stratum_cap_share: float = 0.5
    cap_warmup: int = 100
    # Splits: the audit share takes the bottom of the unit interval, calibration the next slice, train the rest.
    calibration_share: float = 0.05
    audit_share: float = 0.05
    audit_salt: str = "flywheel-audit-v1"
    # Whether the built round may become current: see flywheel.domain.rounds.promotion.
    promotion: PromotionConfig = field(default_factory=PromotionConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.promotion, PromotionConfig):  # given as JSON-like values
            object.__setattr__(self, "promotion", PromotionConfig.of(self.promotion))
        if not self.kinds or any(k not in KINDS for k in self.kinds) or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds must be distinct values of {KINDS}")
        for name in ("ngram", "min_item_words", "shingle_words", "num_perm", "minhash_seed", "min_chars",
                     "max_chars", "cap_warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
        if not isinstance(self.semantic, bool):
            raise ValueError("semantic must be true or false")
        if not self.semantic_model:
            raise ValueError("semantic_model must not be empty")
        for name in ("minhash_threshold", "semantic_threshold", "max_garbled_share", "stratum_cap_share",
                     "calibration_share", "audit_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.ngram < 1 or self.shingle_words < 1:
            raise ValueError("ngram and shingle_words must be >= 1")
        if not self.shingle_words <= self.min_item_words <= self.ngram:
            raise ValueError("need shingle_words <= min_item_words <= ngram")
        if not 0.0 < self.minhash_threshold <= 1.0:
            raise ValueError("minhash_threshold must be within (0, 1]")
        if self.num_perm < 2:
            raise ValueError("num_perm must be >= 2")
        if self.min_chars < 0 or self.max_chars < self.min_chars:
            raise ValueError("need 0 <= min_chars <= max_chars")
        if self.stratum_cap_share <= 0.0:
            raise ValueError("stratum_cap_share must be > 0")
        if self.cap_warmup < 0:
            raise ValueError("cap_warmup must be >= 0")
        if self.calibration_share + self.audit_share > 1.0:
            raise ValueError("calibration_share + audit_share must be <= 1")
        if not self.audit_salt:
            raise ValueError("audit_salt must not be empty")

    def as_dict(self) -> dict[str, Any]:
        """The values as JSON-able data (kinds as a list). The semantic check's knobs only when it is on: a config
        without it names the same version (and round) as before the check existed."""
        values = asdict(self)
        values["kinds"] = list(self.kinds)
        if not self.semantic:
            for name in ("semantic", "semantic_model", "semantic_threshold"):
                del values[name]
        return values

    def version(self) -> str:
        """A short hash of the values and the builder version: equal configs (1 or 1.0) give the same version."""
        canonical = _canonical(self.as_dict())
        canonical["builder_version"] = BUILDER_VERSION
        return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _canonical(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers as floats, at any depth (1 and 1.0 name the same config)."""
    out: dict[str, Any] = {}
    for name, value in sorted(values.items()):
        if isinstance(value, dict):
            out[name] = _canonical(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
        else:
            out[name] = value
    return out
