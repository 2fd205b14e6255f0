"""Quality of the signals: inter-rater agreement, and length and position bias audits."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from flywheel.domain.signals import FeedbackRecord, InteractionRecord, normalised_score

if TYPE_CHECKING:  # numpy is imported where agreement is computed: a report without multi-rater items needs none
    import numpy as np

Level = Literal["nominal", "ordinal"]

# Upper bounds (exclusive) of the agreement bands. 0.40 and 0.75 are Fleiss' (1981) cut-offs (poor / fair to
# good / excellent); 0.60 splits his middle band. Below 0.40, feedback is not trained on (the agreement gate of
# flywheel.domain.rounds.promotion).
BANDS: tuple[tuple[float, str], ...] = (
    (0.40, "poor"),
    (0.60, "fair"),
    (0.75, "moderate"),
    (math.inf, "strong"),
)
MIN_ITEMS = 2  # fewer items judged by several raters than this: no figure


def band(value: float) -> str:
    """The band name of an agreement figure: poor < 0.40 <= fair < 0.60 <= moderate < 0.75 <= strong."""
    # Rounded first: a kappa of exactly 0.40 computed as 0.39999999999999997 is still fair.
    value = round(value, 9)
    return next(name for upper, name in BANDS if value < upper)


class Judgement(NamedTuple):
    """One rater's judgement of one item; the trailing fields only serve grouping (agreement_by)."""

    item_id: str
    rater_id: str
    value: float  # 1.0/0.0 for thumbs; the normalised 0..1 score for ratings
    app_id: str = ""
    model_version: str = ""
    prompt_version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One agreement statistic and what it was computed over."""

    value: float
    band: str
    items: int
    raters: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Agreement:
    """Agreement among raters over the items that several of them judged; None where a figure is undefined."""

    level: Level
    items: int  # items judged by at least two raters
    raters: int  # distinct raters of those items
    judgements: int  # judgements of those items
    cohen_kappa: Figure | None  # items judged by exactly two raters
    fleiss_kappa: Figure | None  # items judged by two or more raters
    krippendorff_alpha: Figure | None  # nominal for binary values, ordinal for ratings


# ---- agreement ----


def _value(v: float | int | bool) -> float:
    # Rounded so 0.75 computed as 3/4 and as 0.75 fall into one category.
    return round(float(v), 9)


def infer_level(values: Iterable[float | int | bool]) -> Level:
    """nominal when every value is 0 or 1 (thumbs), ordinal otherwise (ratings)."""
    return "nominal" if {_value(v) for v in values} <= {0.0, 1.0} else "ordinal"


def _panels(judgements: Iterable[Sequence[Any]]) -> dict[str, dict[str, float]]:
    """item -> rater -> value; a rater's later judgement of an item replaces an earlier one."""
    panels: dict[str, dict[str, float]] = defaultdict(dict)
    for j in judgements:
        panels[str(j[0])][str(j[1])] = _value(j[2])
    return {item: raters for item, raters in panels.items() if len(raters) >= 2}


def _figure(value: float | None, items: int, raters: int, min_items: int) -> Figure | None:
    if value is None or items < min_items or not math.isfinite(value):
        return None
    return Figure(value=float(value), band=band(value), items=items, raters=raters)


def agreement(judgements: Iterable[Sequence[Any]], *, level: Level | None = None,
              min_items: int = MIN_ITEMS) -> Agreement:
    """Cohen's kappa, Fleiss' kappa and Krippendorff's alpha of (item_id, rater_id, value) judgements.

    Only items judged by two or more raters count. A figure is None when fewer than `min_items` items back
    it or when it is undefined (e.g. every judgement has the same value); never an exception.
    """
    rows = list(judgements)
    level = level or infer_level(j[2] for j in rows)
    panels = _panels(rows)
    items = sorted(panels)
    raters = sorted({r for item in items for r in panels[item]})
    categories = sorted({v for item in items for v in panels[item].values()})

    pairs = [item for item in items if len(panels[item]) == 2]
    cohen = _figure(_cohen(panels, pairs, level), len(pairs),
                    len({r for item in pairs for r in panels[item]}), min_items)
    fleiss = _figure(_fleiss(panels, items, categories), len(items), len(raters), min_items)
    alpha = _figure(_krippendorff(panels, items, raters, level), len(items), len(raters), min_items)
    return Agreement(level=level, items=len(items), raters=len(raters),
                     judgements=sum(len(panels[i]) for i in items), cohen_kappa=cohen, fleiss_kappa=fleiss,
                     krippendorff_alpha=alpha)


def _cohen(panels: Mapping[str, Mapping[str, float]], items: Sequence[str], level: Level) -> float | None:
    if not items:
        return None
    used = sorted({v for item in items for v in panels[item].values()})
    if len(used) < 2:
        return None  # one category only: chance agreement is 1 and kappa is 0/0
    import numpy as np
    from statsmodels.stats.inter_rater import cohens_kappa  # slow to import: only callers that measure pay

    index = {v: n for n, v in enumerate(used)}
    table = np.zeros((len(used), len(used)))
    for item in items:
        # "First" and "second" rater by rater id: arbitrary but the same on every run.
        (_, first), (_, second) = sorted(panels[item].items())
        table[index[first], index[second]] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        if level == "nominal":
            kappa = cohens_kappa(table, return_results=False)
        else:
            # Linear weights on the normalised scores themselves, so a skipped scale point still counts double.
            kappa = cohens_kappa(table, weights=np.array(used), wt="linear", return_results=False)
    return float(kappa)


def _fleiss(panels: Mapping[str, Mapping[str, float]], items: Sequence[str],
            categories: Sequence[float]) -> float | None:
    if not items or len(categories) < 2:
        return None
    import numpy as np

    index = {v: n for n, v in enumerate(categories)}
    table = np.zeros((len(items), len(categories)))
    for row, item in enumerate(items):
        for v in panels[item].values():
            table[row, index[v]] += 1
    sizes = table.sum(axis=1)
    if (sizes == sizes[0]).all():
        from statsmodels.stats.inter_rater import fleiss_kappa

        with np.errstate(divide="ignore", invalid="ignore"):
            return float(fleiss_kappa(table, method="fleiss"))
    return fleiss_kappa_unequal(table)


def fleiss_kappa_unequal(table: np.ndarray[Any, Any]) -> float | None:
    """Fleiss' kappa of an items x categories count table whose rows may sum to different panel sizes.

    statsmodels' fleiss_kappa requires one panel size; this is the usual generalisation (each item's
    agreement over its own n_i (n_i - 1) rater pairs, category shares pooled over all judgements), which
    equals Fleiss' kappa when every panel has the same size.
    """
    import numpy as np

    table = np.asarray(table, dtype=float)
    sizes = table.sum(axis=1)
    if table.ndim != 2 or len(table) == 0 or (sizes < 2).any():
        return None
    observed = float((((table * table).sum(axis=1) - sizes) / (sizes * (sizes - 1))).mean())
    shares = table.sum(axis=0) / sizes.sum()
    chance = float((shares * shares).sum())
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def _krippendorff(panels: Mapping[str, Mapping[str, float]], items: Sequence[str], raters: Sequence[str],
                  level: Level) -> float | None:
    if not items:
        return None
    import krippendorff
    import numpy as np

    column = {item: n for n, item in enumerate(items)}
    row = {rater: n for n, rater in enumerate(raters)}
    data = np.full((len(raters), len(items)), np.nan)
    for item in items:
        for rater, v in panels[item].items():
            data[row[rater], column[item]] = v
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    except (ValueError, ZeroDivisionError):
        return None  # e.g. a single value in the whole domain: alpha is undefined


def judgements_from(interactions: Iterable[InteractionRecord], feedback: Iterable[FeedbackRecord], *,
                    kind: Literal["thumbs", "rating"]) -> tuple[Judgement, ...]:
    """Thumbs (1.0 up, 0.0 down) or ratings (normalised 0..1) as judgements, in event-log order.

    A rating item is one interaction on one dimension. Feedback about an interaction that is not given is
    skipped: its app and model version are unknown.
    """
    by_id = {i.interaction_id: i for i in interactions}
    out = []
    for f in sorted({f.event_id: f for f in feedback}.values(), key=lambda f: (f.position, f.event_id)):
        record = by_id.get(f.interaction_id)
        if f.type != kind or record is None:
            continue
        if kind == "thumbs":
            item, value = f.interaction_id, 1.0 if f.payload["value"] == "up" else 0.0
        else:
            score = normalised_score(int(f.payload["score"]), int(f.payload.get("scale", 5)))
            if score is None:
                continue
            dimension = f.payload.get("dimension")
            item = f.interaction_id if dimension is None else f"{f.interaction_id}#{dimension}"
            value = float(score)
        out.append(Judgement(item, f.user_id_hash, value, record.app_id, record.model_version,
                             record.prompt_version))
    return tuple(out)


def agreement_by(judgements: Iterable[Judgement],
                 key: Literal["app_id", "model_version", "prompt_version"] | Callable[[Judgement], str],
                 *, level: Level | None = None, min_items: int = MIN_ITEMS) -> dict[str, Agreement]:
    """agreement() per app, per model version (or per any key of a judgement), sorted by key.

    The level is decided once over all judgements, so a group that happens to hold only the extremes of a
    rating scale is still measured as ordinal.
    """
    rows = list(judgements)
    level = level or infer_level(j.value for j in rows)
    keyed: Callable[[Judgement], str] = key if callable(key) else (lambda j: str(getattr(j, key)))
    groups: dict[str, list[Judgement]] = defaultdict(list)
    for j in rows:
        groups[keyed(j)].append(j)
    return {k: agreement(groups[k], level=level, min_items=min_items) for k in sorted(groups)}


# ---- bias audits ----


class _Pair(Protocol):
    @property
    def chosen(self) -> str: ...
    @property
    def rejected(self) -> str: ...
    @property
    def margin(self) -> float: ...
    @property
    def tie(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthBias:
    """How much the chosen response's length predicts that it was chosen (lengths in characters)."""

    pairs: int  # non-tie pairs
    chosen_longer: int
    equal_length: int
    chosen_longer_rate: float | None  # chosen_longer / pairs
    # Pearson r of (len(chosen) - len(rejected)) with the signed margin. Ties count with margin 0. Each pair
    # enters in both orientations, (d, m) and (-d, -m), so the figure does not depend on which response is
    # called first; r > 0 means the longer response tends to win, and by more.
    correlation: float | None


def length_bias(pairs: Iterable[_Pair]) -> LengthBias:
    """Length bias of preference pairs: share of non-tie pairs won by the longer response, and correlation."""
    rows = list(pairs)
    decided = [p for p in rows if not p.tie]
    diffs = [float(len(p.chosen) - len(p.rejected)) for p in rows]
    margins = [0.0 if p.tie else float(p.margin) for p in rows]
    return length_bias_from_sums(
        decided=len(decided), longer=sum(len(p.chosen) > len(p.rejected) for p in decided),
        equal=sum(len(p.chosen) == len(p.rejected) for p in decided),
        sum_dm=math.fsum(d * m for d, m in zip(diffs, margins, strict=True)),
        sum_dd=math.fsum(d * d for d in diffs), sum_mm=math.fsum(m * m for m in margins))


def length_bias_from_sums(*, decided: int, longer: int, equal: int, sum_dm: float, sum_dd: float,
                          sum_mm: float) -> LengthBias:
    """length_bias() from counts and sums a query can return instead of every pair. Each pair enters the
    correlation in both orientations, so both means are 0 and Pearson's r is sum(d*m) / sqrt(sum(d*d) *
    sum(m*m)) over the pairs (d: length difference, m: signed margin, 0 for a tie)."""
    correlation = None
    if sum_dd > 0 and sum_mm > 0:
        r = sum_dm / math.sqrt(sum_dd * sum_mm)
        correlation = max(-1.0, min(1.0, r)) if math.isfinite(r) else None
    return LengthBias(pairs=decided, chosen_longer=longer, equal_length=equal,
                      chosen_longer_rate=longer / decided if decided else None, correlation=correlation)


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionBias:
    """How often the response shown first wins an explicit comparison."""

    comparisons: int  # non-tie comparisons
    ties: int
    first_shown_wins: int
    first_shown_win_rate: float | None
    p_value: float | None  # exact two-sided binomial test of the win rate against 0.5


def position_bias(comparisons: Iterable[FeedbackRecord]) -> PositionBias:
    """Position bias of comparison feedback; other feedback types are ignored."""
    rows = [f for f in {f.event_id: f for f in comparisons}.values() if f.type == "comparison"]
    decided = [f for f in rows if f.payload["strength"] != "tie"]
    wins = sum(f.payload["presented_order"][0] == f.payload["chosen_interaction_id"] for f in decided)
    return position_bias_of(len(decided), len(rows) - len(decided), wins)


def position_bias_of(decided: int, ties: int, wins: int) -> PositionBias:
    """position_bias() from its counts (what a query can return instead of every comparison)."""
    return PositionBias(comparisons=decided, ties=ties, first_shown_wins=wins,
                        first_shown_win_rate=wins / decided if decided else None,
                        p_value=fair_coin_p_value(wins, decided) if decided else None)


def fair_coin_p_value(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n trials against p = 0.5: what
    scipy.stats.binomtest(k, n).pvalue gives (tested against it), without importing scipy.stats
    (1.8 s, paid by every round build's report). With p = 0.5 the distribution is symmetric, so the
    outcomes at least as unlikely as k are the two tails beyond min(k, n - k)."""
    tail = min(k, n - k)
    if 2 * tail == n:
        return 1.0
    log_half = n * math.log(0.5)
    log_n = math.lgamma(n + 1)
    terms = [log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half for i in range(tail + 1)]
    top = max(terms)
    return min(1.0, 2.0 * math.exp(top) * math.fsum(math.exp(t - top) for t in terms))
