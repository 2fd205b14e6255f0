"""Agreement on pairwise preferences between users, the judge and the reward model, with bootstrap intervals.

Every item is one preference pair (a user's A/B choice, edit or rating gap) and every rater says which side of
it is better: the users by the pair itself, a scorer by its two values. The two sides are put in one order that
does not depend on who preferred which (`orient`), so a rater's answer is one of three categories, first, tie
or second; were the sides kept as chosen and rejected, the users would always answer "first" and no kappa could
be read. Cohen's kappa is given for every two raters over the items both judged, Krippendorff's alpha (nominal)
over all of them; each with a percentile bootstrap interval over the items, drawn by a seeded generator, so the
same judgements always give the same figures.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from flywheel.domain.quality import MIN_ITEMS, band

if TYPE_CHECKING:
    from flywheel.domain.events import UserPairsScored

USERS = "users"  # the rater whose answers are the users' own preferences
FIRST, TIE, SECOND = 1.0, 0.5, 0.0  # which side of an oriented pair a rater prefers
RESAMPLES = 500
CONFIDENCE = 0.95
SEED = 0
_TIE_EPSILON = 1e-9


def orient(chosen: str, rejected: str) -> tuple[str, str, bool]:
    """The two sides of a pair in their canonical order (by a hash of the text, never by which won), and
    whether the chosen text came first."""
    if _side_key(chosen) <= _side_key(rejected):
        return chosen, rejected, True
    return rejected, chosen, False


def _side_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def user_preference(chosen_first: bool, tie: bool) -> float:
    """The users' answer on an oriented pair."""
    if tie:
        return TIE
    return FIRST if chosen_first else SECOND


def scorer_preference(first: float | None, second: float | None) -> float | None:
    """A scorer's answer on an oriented pair from its values of both sides; None (no answer) when it gave no
    score to either side. Values this close are a tie."""
    if first is None or second is None or not (math.isfinite(first) and math.isfinite(second)):
        return None
    if first - second > _TIE_EPSILON:
        return FIRST
    if second - first > _TIE_EPSILON:
        return SECOND
    return TIE


class PairJudgement(NamedTuple):
    """One rater's answer on one pair; the trailing fields only serve grouping."""

    item_id: str
    rater: str
    value: float  # FIRST, TIE or SECOND
    app_id: str = ""
    model_version: str = ""
    round: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """An agreement figure, its band, and its bootstrap interval (None where the resamples could not give one)."""

    value: float
    band: str
    low: float | None
    high: float | None
    items: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RaterPair:
    """Cohen's kappa of two raters over the items both judged, and how often they gave the same answer."""

    raters: tuple[str, str]
    items: int
    agreement_rate: float | None
    cohen_kappa: Estimate | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PairwiseAgreement:
    items: int  # pairs judged by two raters or more
    raters: tuple[str, ...]
    judgements: int
    rater_pairs: tuple[RaterPair, ...]
    krippendorff_alpha: Estimate | None


def cohen_kappa(answers: Sequence[tuple[float, float]]) -> float | None:
    """Cohen's kappa of (rater a, rater b) answers (nominal); None when undefined (one category only)."""
    n = len(answers)
    if n == 0:
        return None
    a = Counter(x for x, _ in answers)
    b = Counter(y for _, y in answers)
    chance = math.fsum(a[c] * b[c] for c in a) / (n * n)
    if chance >= 1.0 - 1e-12:
        return None
    observed = sum(x == y for x, y in answers) / n
    return (observed - chance) / (1.0 - chance)


def krippendorff_alpha(units: Sequence[Sequence[float]]) -> float | None:
    """Krippendorff's alpha (nominal) of units, each the answers of the raters who judged it. Units with one
    answer cannot be paired and are left out; None when undefined (a single category in all)."""
    coincidences: dict[tuple[float, float], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                coincidences[(c, k)] += (nc * (nk - (c == k))) / (m - 1)
    totals: dict[float, float] = defaultdict(float)
    for (c, _), o in coincidences.items():
        totals[c] += o
    n = math.fsum(totals.values())
    if n <= 1:
        return None
    disagreement = math.fsum(o for (c, k), o in coincidences.items() if c != k)
    expected = math.fsum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if expected <= 0:
        return None
    return 1.0 - (n - 1) * disagreement / expected


def bootstrap_interval(units: Sequence[object], statistic: Callable[[Sequence[object]], float | None], *,
                       resamples: int = RESAMPLES, seed: int = SEED,
                       confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """The percentile bootstrap interval of `statistic` over `units` drawn with replacement, `resamples` times,
    by a generator seeded with `seed`. Resamples where the statistic is undefined are left out; None, None when
    fewer than half of them give a value."""
    if not units or resamples < 1:
        return None, None
    rng = random.Random(seed)
    n = len(units)
    values = []
    for _ in range(resamples):
        v = statistic([units[rng.randrange(n)] for _ in range(n)])
        if v is not None and math.isfinite(v):
            values.append(v)
    if len(values) * 2 < resamples:
        return None, None
    values.sort()
    tail = (1.0 - confidence) / 2
    return _quantile(values, tail), _quantile(values, 1.0 - tail)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _estimate(value: float | None, units: Sequence[object], statistic: Callable[[Sequence[object]], float | None],
              *, resamples: int, seed: int, confidence: float, min_items: int) -> Estimate | None:
    if value is None or len(units) < min_items:
        return None
    low, high = bootstrap_interval(units, statistic, resamples=resamples, seed=seed, confidence=confidence)
    return Estimate(value=value, band=band(value), low=low, high=high, items=len(units))


def _kappa_of(units: Sequence[object]) -> float | None:
    return cohen_kappa(units)  # type: ignore[arg-type]


def _alpha_of(units: Sequence[object]) -> float | None:
    return krippendorff_alpha(units)  # type: ignore[arg-type]


def pairwise_agreement(judgements: Iterable[PairJudgement], *, resamples: int = RESAMPLES, seed: int = SEED,
                       confidence: float = CONFIDENCE, min_items: int = MIN_ITEMS) -> PairwiseAgreement:
    """Cohen's kappa for every two raters and Krippendorff's alpha over all raters, each with its bootstrap
    interval, over the pairs that two raters or more judged. A rater's later answer on an item replaces an
    earlier one. Figures backed by fewer than `min_items` items, or undefined, are None."""
    panels: dict[str, dict[str, float]] = defaultdict(dict)
    for j in judgements:
        panels[j.item_id][j.rater] = j.value
    shared = {item: raters for item, raters in sorted(panels.items()) if len(raters) >= 2}
    raters = tuple(sorted({r for raters in shared.values() for r in raters}))
    pairs = []
    for a, b in combinations(raters, 2):
        answers = [(p[a], p[b]) for p in shared.values() if a in p and b in p]
        if not answers:
            continue
        kappa = _estimate(cohen_kappa(answers), answers, _kappa_of, resamples=resamples, seed=seed,
                          confidence=confidence, min_items=min_items)
        pairs.append(RaterPair(raters=(a, b), items=len(answers), cohen_kappa=kappa,
                               agreement_rate=sum(x == y for x, y in answers) / len(answers)))
    units = [tuple(p[r] for r in sorted(p)) for p in shared.values()]
    alpha = _estimate(krippendorff_alpha(units), units, _alpha_of, resamples=resamples, seed=seed,
                      confidence=confidence, min_items=min_items)
    return PairwiseAgreement(items=len(shared), raters=raters, judgements=sum(len(p) for p in shared.values()),
                             rater_pairs=tuple(pairs), krippendorff_alpha=alpha)


def pairwise_agreement_by(judgements: Iterable[PairJudgement],
                          key: Literal["round", "app_id", "model_version"], *, resamples: int = RESAMPLES,
                          seed: int = SEED, confidence: float = CONFIDENCE,
                          min_items: int = MIN_ITEMS) -> dict[str, PairwiseAgreement]:
    """pairwise_agreement() per round, app or model version, sorted by key, round numbers as numbers (each
    group's resamples are drawn with the same seed)."""
    groups: dict[str, list[PairJudgement]] = defaultdict(list)
    for j in judgements:
        groups[str(getattr(j, key))].append(j)
    return {k: pairwise_agreement(groups[k], resamples=resamples, seed=seed, confidence=confidence,
                                  min_items=min_items) for k in sorted(groups, key=_in_order)}


def _in_order(key: str) -> tuple[int, int, str]:
    """Round numbers as numbers (2 before 10), then any other label (such as "next")."""
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def scored_pair(pair: dict[str, Any], values: dict[str, tuple[float | None, float | None]]) -> dict[str, Any]:
    """A user's pair as UserPairsScored records it, from each scorer's (chosen, rejected) values: the sides in
    `orient`'s order and each scorer's values in that order."""
    _, _, chosen_first = orient(pair["chosen"], pair["rejected"])
    return {"pair_id": pair["pair_id"], "prompt_key": pair["prompt_key"], "rule": pair["rule"],
            "app_id": pair["app_id"], "model_version": pair["model_version"], "tie": pair["tie"],
            "chosen_first": chosen_first,
            "scores": {name: list(v) if chosen_first else [v[1], v[0]] for name, v in sorted(values.items())}}


def judgements_of(scored: UserPairsScored, round_label: str) -> list[PairJudgement]:
    """The users' and every scorer's answers on the pairs of one UserPairsScored event (a scorer that gave no
    score to a side gives no answer)."""
    out = []
    for p in scored.pairs:
        item = p["pair_id"]
        app, model = p["app_id"], p["model_version"]
        out.append(PairJudgement(item, USERS, user_preference(p["chosen_first"], p["tie"]), app, model, round_label))
        for scorer, (first, second) in p["scores"].items():
            answer = scorer_preference(first, second)
            if answer is not None:
                out.append(PairJudgement(item, scorer, answer, app, model, round_label))
    return out
