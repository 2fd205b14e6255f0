"""Promotion gates: whether a built round may become current (promoted) or is held, gate by gate.

Row gates (flywheel.domain.rounds.gates) decide about each row; these decide about the round as a whole, from its
manifest, the feedback audits at its watermark and its parent. Every gate gives a value, a limit and a verdict,
and says whether it is blocking: a round that fails a blocking gate is held. A gate without enough data to judge
says so ("not enough data") and passes: it is never silently failed or passed.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flywheel.domain.quality import Judgement, Level, infer_level
from flywheel.domain.rounds.rows import SCORER_SEPARATOR

Status = Literal["pass", "fail", "not enough data"]
PROMOTED, HELD = "promoted", "held"
AGREEMENT_KINDS = ("thumbs", "rating")


@dataclass(frozen=True, kw_only=True)
class PromotionConfig:
    """Every promotion gate's limit and whether it blocks promotion (part of RoundConfig, so of its version)."""

    # Rater agreement per (app, model version, feedback kind): Krippendorff's alpha with a percentile bootstrap
    # interval over items. A slice whose interval lies wholly below the limit is not trained on.
    agreement_limit: float = 0.40
    agreement_min_items: int = 30  # items judged by two or more raters, fewer: not enough data
    agreement_resamples: int = 200
    agreement_confidence: float = 0.95
    agreement_blocking: bool = False  # the failing slice's rows are left out; the round itself may go on
    # Rows per kind the round must hold.
    min_sft_rows: int = 0
    min_dpo_rows: int = 0
    min_kto_rows: int = 0
    rows_blocking: bool = True
    # Length bias of preference pairs: share won by the longer response, and r(length difference, margin). Edits
    # make the chosen side longer by nature (the simulator's realistic traffic: share 0.68, r 0.68).
    max_chosen_longer_share: float = 0.80
    max_length_correlation: float = 0.80
    min_bias_pairs: int = 30
    length_bias_blocking: bool = True
    # Position bias of A/B comparisons: the first-shown win rate must lie within [1 - max, max], and its
    # two-sided p-value against 0.5 must not fall below the minimum.
    max_first_shown_win_rate: float = 0.65
    min_position_p_value: float = 0.001
    min_bias_comparisons: int = 30
    position_bias_blocking: bool = True
    # Share of the rows reaching the contamination gate that it removed.
    max_contamination_rate: float = 0.05
    contamination_blocking: bool = True
    # Relative change of rows per kind and per (kind, source) against the parent round; a count below
    # `min_drift_rows` in both rounds is not enough data. Below 1, so a kind or source that vanishes or doubles
    # fails, while a round cut from a log that grew by half again (its traffic since the parent) passes.
    max_drift: float = 0.90
    min_drift_rows: int = 100
    drift_blocking: bool = True
    # Generated SFT samples and DPO pairs selected by a scorer that its latest bias-probe audit (as of the round's
    # watermark) flagged: at most this many.
    max_flagged_scorer_rows: int = 0
    flagged_scorer_blocking: bool = True

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"promotion.{name} must be a finite number")
            if value < 0 and name != "agreement_limit":  # alpha runs from -1 to 1
                raise ValueError(f"promotion.{name} must be >= 0")
        if not -1.0 <= self.agreement_limit <= 1.0:
            raise ValueError("promotion.agreement_limit must be within -1..1")
        for name in ("agreement_min_items", "agreement_resamples", "min_sft_rows", "min_dpo_rows", "min_kto_rows",
                     "min_bias_pairs", "min_bias_comparisons", "min_drift_rows", "max_flagged_scorer_rows"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"promotion.{name} must be an integer")
        if not 0.0 < self.agreement_confidence < 1.0:
            raise ValueError("promotion.agreement_confidence must be within (0, 1)")
        if self.agreement_resamples < 1:
            raise ValueError("promotion.agreement_resamples must be >= 1")
        if not 0.5 <= self.max_first_shown_win_rate <= 1.0:
            raise ValueError("promotion.max_first_shown_win_rate must be within 0.5..1")

    @classmethod
    def of(cls, values: Mapping[str, Any] | PromotionConfig | None) -> PromotionConfig:
        if isinstance(values, PromotionConfig):
            return values
        return cls(**dict(values or {}))


@dataclass(frozen=True, kw_only=True)
class GateVerdict:
    """One promotion gate's outcome; `passed` is True for "not enough data" too (see `status`)."""

    name: str
    value: float | None
    limit: float
    blocking: bool
    status: Status
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit, "blocking": self.blocking,
                "passed": self.passed, "status": self.status, **({"detail": self.detail} if self.detail else {})}


def state_of(verdicts: Iterable[GateVerdict]) -> str:
    """promoted when every blocking gate passed, else held."""
    return HELD if any(v.blocking and not v.passed for v in verdicts) else PROMOTED


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


# ---- rater agreement ----

@dataclass(frozen=True, kw_only=True)
class AlphaInterval:
    """Krippendorff's alpha over the items of a slice with its bootstrap interval (None where undefined)."""

    items: int
    alpha: float | None
    low: float | None
    high: float | None


def _alpha(data: Any, level: Level) -> float | None:
    import krippendorff
    import numpy as np

    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    except (ValueError, ZeroDivisionError):
        return None  # one value in the whole domain: alpha is undefined
    return value if math.isfinite(value) else None


def alpha_interval(judgements: Sequence[Judgement], *, level: Level, resamples: int, confidence: float,
                   seed: int) -> AlphaInterval:
    """Krippendorff's alpha of the items judged by two or more raters, and a percentile bootstrap interval
    (items resampled with replacement, `resamples` times, from a generator seeded with `seed`). Resamples where
    alpha is undefined are skipped; none defined: no interval."""
    import numpy as np

    panels: dict[str, dict[str, float]] = defaultdict(dict)
    for j in judgements:
        panels[j.item_id][j.rater_id] = round(float(j.value), 9)
    items = sorted(i for i, raters in panels.items() if len(raters) >= 2)
    if not items:
        return AlphaInterval(items=0, alpha=None, low=None, high=None)
    raters = sorted({r for i in items for r in panels[i]})
    row = {r: n for n, r in enumerate(raters)}
    data = np.full((len(raters), len(items)), np.nan)
    for column, item in enumerate(items):
        for rater, value in panels[item].items():
            data[row[rater], column] = value
    alpha = _alpha(data, level)
    rng = np.random.default_rng(seed)
    draws = [a for _ in range(resamples)
             if (a := _alpha(data[:, rng.integers(0, len(items), len(items))], level)) is not None]
    if not draws:
        return AlphaInterval(items=len(items), alpha=alpha, low=None, high=None)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.array(draws), [tail, 1.0 - tail])
    return AlphaInterval(items=len(items), alpha=alpha, low=float(low), high=float(high))


def slice_seed(config_version: str, key: str) -> int:
    """The bootstrap's seed for one slice: from the config's version, so the same build draws the same."""
    return int.from_bytes(hashlib.sha256(f"{config_version}:{key}".encode()).digest()[:8], "big")


def agreement_gates(judgements: Mapping[str, Sequence[Judgement]], config: PromotionConfig, *,
                    config_version: str) -> list[GateVerdict]:
    """One gate per (feedback kind, app, model version) whose items several raters judged: it fails when the upper
    bound of alpha's interval is below the limit, and has not enough data below `agreement_min_items` items or where
    alpha is undefined."""
    out = []
    for kind in AGREEMENT_KINDS:
        rows = judgements.get(kind, ())
        if not rows:
            continue
        level = infer_level(j.value for j in rows)
        slices: dict[tuple[str, str], list[Judgement]] = defaultdict(list)
        for j in rows:
            slices[(j.app_id, j.model_version)].append(j)
        for (app, model), group in sorted(slices.items()):
            name = f"agreement:{kind}:{app}/{model}"
            found = alpha_interval(group, level=level, resamples=config.agreement_resamples,
                                   confidence=config.agreement_confidence, seed=slice_seed(config_version, name))
            if found.items == 0:
                continue
            status: Status
            if found.items < config.agreement_min_items or found.alpha is None or found.high is None:
                status = "not enough data"
            else:
                status = "fail" if round(found.high, 9) < config.agreement_limit else "pass"
            out.append(GateVerdict(
                name=name, value=_round(found.alpha), limit=config.agreement_limit,
                blocking=config.agreement_blocking, status=status,
                detail={"kind": kind, "app_id": app, "model_version": model, "items": found.items, "level": level,
                        "interval": [_round(found.low), _round(found.high)],
                        "min_items": config.agreement_min_items}))
    return out


def failing_slices(verdicts: Iterable[GateVerdict]) -> frozenset[tuple[str, str]]:
    """(app, model version) slices whose human-feedback rows are not trained on: any of their agreement gates
    failed."""
    return frozenset((v.detail["app_id"], v.detail["model_version"]) for v in verdicts
                     if v.name.startswith("agreement:") and v.status == "fail")


# ---- the round's own figures ----

def row_gates(rows_out_by_kind: Mapping[str, int], config: PromotionConfig) -> list[GateVerdict]:
    """Minimum rows per kind."""
    limits = {"sft": config.min_sft_rows, "dpo": config.min_dpo_rows, "kto": config.min_kto_rows}
    return [GateVerdict(name=f"min_rows:{kind}", value=float(rows_out_by_kind.get(kind, 0)), limit=float(limit),
                        blocking=config.rows_blocking,
                        status="pass" if rows_out_by_kind.get(kind, 0) >= limit else "fail")
            for kind, limit in limits.items()]


def length_bias_gates(length_bias: Mapping[str, Any], config: PromotionConfig) -> list[GateVerdict]:
    """The share of non-tie pairs the longer response won, and |r| of length difference with margin."""
    pairs = int(length_bias.get("pairs") or 0)
    enough = pairs >= config.min_bias_pairs
    detail = {"pairs": pairs, "min_pairs": config.min_bias_pairs}
    share, r = length_bias.get("chosen_longer_rate"), length_bias.get("correlation")

    def status(value: float | None, ok: bool) -> Status:
        return "not enough data" if not enough or value is None else "pass" if ok else "fail"

    return [
        GateVerdict(name="length_bias:chosen_longer_share", value=_round(share),
                    limit=config.max_chosen_longer_share, blocking=config.length_bias_blocking,
                    status=status(share, share is not None and share <= config.max_chosen_longer_share),
                    detail=detail),
        GateVerdict(name="length_bias:correlation", value=_round(r), limit=config.max_length_correlation,
                    blocking=config.length_bias_blocking,
                    status=status(r, r is not None and abs(r) <= config.max_length_correlation), detail=detail),
    ]


def position_bias_gates(position_bias: Mapping[str, Any], config: PromotionConfig) -> list[GateVerdict]:
    """The first-shown win rate of A/B comparisons (within [1 - max, max]) and its p-value (at least the minimum)."""
    n = int(position_bias.get("comparisons") or 0)
    enough = n >= config.min_bias_comparisons
    detail = {"comparisons": n, "min_comparisons": config.min_bias_comparisons}
    rate, p = position_bias.get("first_shown_win_rate"), position_bias.get("p_value")
    top = config.max_first_shown_win_rate
    rate_ok = rate is not None and 1.0 - top <= rate <= top
    p_ok = p is not None and p >= config.min_position_p_value
    return [
        GateVerdict(name="position_bias:first_shown_win_rate", value=_round(rate), limit=top,
                    blocking=config.position_bias_blocking,
                    status="not enough data" if not enough or rate is None else "pass" if rate_ok else "fail",
                    detail=detail),
        GateVerdict(name="position_bias:p_value", value=_round(p), limit=config.min_position_p_value,
                    blocking=config.position_bias_blocking,
                    status="not enough data" if not enough or p is None else "pass" if p_ok else "fail",
                    detail=detail),
    ]


def contamination_gate(reached: int, contaminated: int, config: PromotionConfig) -> GateVerdict:
    """The share of rows reaching the contamination gate that it removed (no row reached it: not enough data)."""
    rate = contaminated / reached if reached else None
    return GateVerdict(name="contamination:hit_rate", value=_round(rate), limit=config.max_contamination_rate,
                       blocking=config.contamination_blocking,
                       status="not enough data" if rate is None else
                       "pass" if rate <= config.max_contamination_rate else "fail",
                       detail={"rows": reached, "contaminated": contaminated})


def drift_gates(rows: Mapping[str, int], sources: Mapping[str, Mapping[str, int]],
                parent_rows: Mapping[str, int] | None, parent_sources: Mapping[str, Mapping[str, int]] | None,
                config: PromotionConfig) -> list[GateVerdict]:
    """Relative change |new - old| / old of rows per kind and per (kind, source) against the parent round. No
    parent, or fewer than `min_drift_rows` rows in both rounds: not enough data."""

    def gate(name: str, new: int, old: int | None) -> GateVerdict:
        if old is None or max(new, old) < config.min_drift_rows:
            return GateVerdict(name=name, value=None, limit=config.max_drift, blocking=config.drift_blocking,
                               status="not enough data", detail={"rows": new, "parent_rows": old,
                                                                 "min_rows": config.min_drift_rows})
        change = abs(new - old) / old if old else math.inf
        return GateVerdict(name=name, value=_round(change) if math.isfinite(change) else None,
                           limit=config.max_drift, blocking=config.drift_blocking,
                           status="pass" if change <= config.max_drift else "fail",
                           detail={"rows": new, "parent_rows": old})

    out = [gate(f"drift:rows:{kind}", rows.get(kind, 0), None if parent_rows is None else parent_rows.get(kind, 0))
           for kind in sorted(rows)]
    kinds = sorted(set(sources) | set(parent_sources or {}))
    for kind in kinds:
        names = sorted(set(sources.get(kind, {})) | set((parent_sources or {}).get(kind, {})))
        for source in names:
            old = None if parent_sources is None else parent_sources.get(kind, {}).get(source, 0)
            out.append(gate(f"drift:source:{kind}/{source}", sources.get(kind, {}).get(source, 0), old))
    return out


def flagged_scorer_gate(selected_by: Mapping[str, Mapping[str, int]], flagged: Iterable[str],
                        config: PromotionConfig) -> GateVerdict:
    """SFT samples and DPO pairs the round holds that a flagged scorer (bias-probe accuracy below its minimum)
    helped select; fails above `max_flagged_scorer_rows`. A round without selected rows: not enough data."""
    flagged_set = frozenset(flagged)
    flagged = sorted(flagged_set)
    by_scorer: dict[str, int] = defaultdict(int)
    tainted = {kind: 0 for kind in ("sft", "dpo")}
    for kind, counts in selected_by.items():
        for scorers, n in counts.items():  # "a+b": the set of scorers that selected n rows (manifest.selected_by)
            names = scorers.split(SCORER_SEPARATOR)
            for scorer in names:
                by_scorer[scorer] += n
            if not flagged_set.isdisjoint(names):
                tainted[kind] = tainted.get(kind, 0) + n
    value = sum(tainted.values())
    status: Status = ("not enough data" if not by_scorer else
                      "pass" if value <= config.max_flagged_scorer_rows else "fail")
    return GateVerdict(name="scorer_audit:flagged_selected_rows", value=float(value),
                       limit=float(config.max_flagged_scorer_rows), blocking=config.flagged_scorer_blocking,
                       status=status, detail={"flagged_scorers": flagged, "rows_by_scorer": dict(sorted(
                           by_scorer.items())), "rows_by_kind": tainted})


def round_gates(manifest: Mapping[str, Any], audits: Mapping[str, Any], config: PromotionConfig, *,
                parent_rows: Mapping[str, int] | None,
                parent_sources: Mapping[str, Mapping[str, int]] | None) -> list[GateVerdict]:
    """The gates on a built round's manifest, the audits at its watermark (store.stats.signal_report) and its
    parent's rows per kind and source (None: no parent)."""
    sources, processing = manifest["data_sources"], manifest["sample_processing"]
    removed = processing["removed"]
    contaminated = sum(removed.get("contamination", {}).values())
    before = ("consent", "pii")  # the gates ahead of contamination in gate_order
    reached = (processing["rows_in"] - sum(processing.get("excluded_kinds", {}).values())
               - sum(sum(removed.get(g, {}).values()) for g in before))
    return [*row_gates(sources["rows_by_kind"], config),
            *length_bias_gates(audits.get("length_bias", {}), config),
            *position_bias_gates(audits.get("position_bias", {}), config),
            contamination_gate(reached, contaminated, config),
            *drift_gates(sources["rows_by_kind"], sources["sources_by_kind"], parent_rows, parent_sources, config),
            flagged_scorer_gate(sources.get("selected_by", {}), audits.get("flagged_scorers", ()), config)]
