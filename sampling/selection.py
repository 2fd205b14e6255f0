"""Selection over a scored candidate group: RSFT best-of-n samples and best-vs-worst DPO pairs with margin rules.

Scorers on different scales (reward-model logits, 1-10 judge grades, 0/1 verifiers) are never added up: the best
and the worst of a group are picked by their rank within the group, averaged over the scorers. The SFT threshold
and the pair margin are read on one scorer's own scale, the deciding scorer's, which the config names. A failed
verifier check vetoes: that candidate is never the best nor a chosen answer. A missing value ("no score", as a
judge reply that does not parse) takes no part in a scorer's ranking, and without the deciding scorer's value a
candidate takes no part at all.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from flywheel.domain.signals import prompt_key
from sampling.verifiers import SCALES, ExplainingScorer, JudgingScorer, Verdict

if TYPE_CHECKING:
    from sampling.verifiers import Scorer

# Every selection rule has a name and an integer version, like the signal rules; bump on a change of meaning.
RSFT_BEST_OF_N = "rsft_best_of_n"
BEST_VS_WORST = "best_vs_worst"
RULES: Mapping[str, int] = {RSFT_BEST_OF_N: 2, BEST_VS_WORST: 2}  # 2: rank combination, vetoes, no-score

# Why a group gave no SFT sample or no pair.
NO_SCORED_CANDIDATES = "no_scored_candidates"
ALL_VETOED = "all_vetoed"  # every candidate the deciding scorer valued failed a check
BELOW_SFT_THRESHOLD = "below_sft_threshold"
FEWER_THAN_TWO_SCORED = "fewer_than_two_scored"
TIE = "tie"
MARGIN_BELOW_MINIMUM = "margin_below_minimum"
DECIDER_PREFERS_REJECTED = "decider_prefers_rejected"  # the ranks and the deciding scorer disagree: no pair
LENGTH_GUARD = "length_guard"

_TIE_EPSILON = 1e-9  # scores this close are equal: float noise must not make a pair


class NoDecidingScorer(ValueError):
    """Scores on several scales and no deciding scorer named: no threshold can be read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """One scorer's value for one candidate, with the scorer's name and version for lineage. `value` None is no
    score (the scorer could not judge this candidate; `reason` says why)."""

    scorer: str
    version: str
    value: float | None
    reason: str = ""  # why the scorer gave this value when it could not judge normally (e.g. unparseable)
    veto: bool = False  # a failed verifier check: never the best, never chosen
    rationale: str = ""  # a judge's own words for its grade
    judge_model: str = ""  # the model that graded, for a judge
    rubric_hash: str = ""  # the rubric it graded under, for a judge


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoredCandidate:
    """One generated completion of a group and every score it received."""

    index: int  # position in the generated group
    text: str
    scores: tuple[Score, ...]

    def value(self, scorer: str) -> float | None:
        """The named scorer's finite value; None when it gave none (or no score)."""
        for s in self.scores:
            if s.scorer == scorer:
                return s.value if s.value is not None and math.isfinite(s.value) else None
        return None

    @property
    def vetoed(self) -> bool:
        return any(s.veto for s in self.scores)


@dataclass(frozen=True, kw_only=True)
class SelectionConfig:
    """Thresholds of the selection rules, on the scale of the deciding scorer (`scorer`).

    `scorer` names the deciding scorer; None is allowed only for a group scored by one scorer, which then decides.
    `sft_threshold` and `min_margin` are read on its own absolute scale (e.g. 1-10 for llm_judge, 0-1 for a
    verifier: see `threshold_problem`).

    The length guard: a pair whose margin is at least `min_margin` but below `length_guard_margin`, and whose
    chosen text is more than `length_guard_ratio` times as long (in characters) as the rejected one, is dropped.
    A small score gap in favour of the longer answer is the signature of a length-biased scorer, not of a better
    answer; a large gap is trusted whatever the lengths.
    """

    sft_threshold: float = 0.8
    min_margin: float = 0.2
    length_guard_margin: float = 0.4
    length_guard_ratio: float = 1.2
    scorer: str | None = None  # the deciding scorer

    def __post_init__(self) -> None:
        for name in ("sft_threshold", "min_margin", "length_guard_margin", "length_guard_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        if self.min_margin < 0:
            raise ValueError("min_margin must be >= 0")
        if self.length_guard_margin < self.min_margin:
            raise ValueError("length_guard_margin must be >= min_margin")
        if self.length_guard_ratio < 1.0:
            raise ValueError("length_guard_ratio must be >= 1")

    def deciding(self, scorers: Iterable[str]) -> str | None:
        """The deciding scorer of a group scored by `scorers`: the named one, else the only one (None: none).
        Raises NoDecidingScorer when there are several and none is named."""
        if self.scorer is not None:
            return self.scorer
        names = sorted(set(scorers))
        if len(names) > 1:
            raise NoDecidingScorer(f"scores from {', '.join(names)} are on different scales and no deciding "
                                   "scorer is named: name the one whose scale the thresholds are on")
        return names[0] if names else None


def threshold_problem(config: SelectionConfig, deciding: str) -> str | None:
    """Why the thresholds cannot be on the deciding scorer's scale (SCALES), or None. A threshold of 0.8 for a
    1-10 judge would take every graded answer; one of 8 for a 0/1 verifier none."""
    scale = SCALES.get(deciding)
    if scale is None:
        return None
    low, high = scale
    if not low <= config.sft_threshold <= high:
        return f"the SFT threshold {config.sft_threshold:g} is off {deciding}'s scale {low:g}-{high:g}"
    if config.min_margin > high - low:
        return f"the minimum margin {config.min_margin:g} is more than {deciding}'s scale {low:g}-{high:g} spans"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RSFTSample:
    """The best of n generated completions, good enough to imitate."""

    sample_id: str
    rule: str
    rule_version: int
    prompt_key: str
    messages: tuple[dict[str, Any], ...]  # the prompt, then {"role": "assistant", "content": best}
    candidate_index: int
    value: float
    scores: tuple[Score, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DPOPair:
    """The best over the worst completion of a group, with the margin that separates them."""

    pair_id: str
    rule: str
    rule_version: int
    prompt_key: str
    prompt: tuple[dict[str, Any], ...]
    chosen: str
    rejected: str
    chosen_index: int
    rejected_index: int
    margin: float
    chosen_scores: tuple[Score, ...]
    rejected_scores: tuple[Score, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """What one group gave, the full scored group (kept for RM/GRPO), and why anything is missing."""

    prompt_key: str
    prompt: tuple[dict[str, Any], ...]
    candidates: tuple[ScoredCandidate, ...]
    sft: RSFTSample | None
    pair: DPOPair | None
    reasons: tuple[str, ...]  # empty when both an SFT sample and a pair were made
    # Which candidates the rules compared and their margin, kept even when nothing was selected, for audits.
    best_index: int | None = None
    worst_index: int | None = None
    margin: float | None = None  # on the deciding scorer's scale
    decided_by: str | None = None
    ranks: Mapping[int, float] = field(default_factory=dict)  # candidate index -> mean rank in the group, 0..1
    vetoed: tuple[int, ...] = ()  # candidates a failed check ruled out of best and chosen


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthBias:
    """How much the selected pairs lean towards longer answers."""

    pairs: int
    chosen_longer: int
    chosen_longer_share: float  # 0 when there are no pairs
    mean_length_ratio: float  # mean of len(chosen) / len(rejected), lengths floored at 1; 0 when there are no pairs
    length_guarded: int  # groups whose pair the length guard dropped


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def score_group(scorers: Sequence[Scorer], prompt_messages: Sequence[Mapping[str, Any]],
                completions: Sequence[str]) -> tuple[ScoredCandidate, ...]:
    """Run every scorer over a group's completions and record each value with its scorer's name and version (a
    judge's model and rubric hash too), its reason, rationale and veto."""
    messages = [dict(m) for m in prompt_messages]
    per_scorer = []
    for scorer in scorers:
        if isinstance(scorer, ExplainingScorer):
            verdicts = scorer.verdicts(messages, list(completions))
        else:
            verdicts = [Verdict(value=float(v)) for v in scorer.score(messages, list(completions))]
        if len(verdicts) != len(completions):
            raise ValueError(f"scorer {scorer.name} gave {len(verdicts)} values for {len(completions)} completions")
        judge = (scorer.judge_model, scorer.rubric_hash) if isinstance(scorer, JudgingScorer) else ("", "")
        per_scorer.append([Score(scorer=scorer.name, version=scorer.version, value=_finite(v.value), reason=v.reason,
                                 veto=v.veto, rationale=v.rationale, judge_model=judge[0], rubric_hash=judge[1])
                           for v in verdicts])
    return tuple(ScoredCandidate(index=i, text=text, scores=tuple(s[i] for s in per_scorer))
                 for i, text in enumerate(completions))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def group_ranks(candidates: Sequence[ScoredCandidate]) -> dict[int, float]:
    """Each candidate's rank within the group, averaged over the scorers: per scorer, 0 for its lowest value and
    1 for its highest (ties share their mean rank), among the candidates it gave a value. A scorer that valued
    fewer than two of them orders nothing and is left out; a candidate no scorer orders ranks 0.5."""
    names = sorted({s.scorer for c in candidates for s in c.scores})
    ranks: dict[int, list[float]] = {c.index: [] for c in candidates}
    for name in names:
        valued = sorted((v, c.index) for c in candidates if (v := c.value(name)) is not None)
        if len(valued) < 2:
            continue
        start = 0
        while start < len(valued):
            end = start
            while end + 1 < len(valued) and valued[end + 1][0] == valued[start][0]:
                end += 1
            shared = (start + end) / 2 / (len(valued) - 1)
            for _, index in valued[start:end + 1]:
                ranks[index].append(shared)
            start = end + 1
    return {i: math.fsum(r) / len(r) if r else 0.5 for i, r in ranks.items()}


def select(group_prompt: Sequence[Mapping[str, Any]], candidates_with_scores: Iterable[ScoredCandidate],
           config: SelectionConfig) -> Selection:
    """Apply the RSFT and best-vs-worst rules to one scored group.

    Only candidates with a value from the deciding scorer take part. Best: among those no check vetoed, the highest
    rank in the group (`group_ranks`); among equal ranks the higher deciding value, the shorter text, the lower
    index. Worst: among the others, a vetoed one first, then the lowest rank, the lower deciding value, the longer
    text, the lower index. The tie-breaks lean against length bias.
    RSFT: the best becomes an SFT sample when its deciding value >= `sft_threshold`.
    Pair: best over worst when the margin, best minus worst on the deciding scorer, is not a tie (> 1e-9), is
    >= `min_margin`, and passes the length guard (see SelectionConfig); a negative one (the ranks and the
    deciding scorer disagree) makes no pair.
    """
    prompt = tuple(dict(m) for m in group_prompt)
    key = prompt_key(prompt)
    group = tuple(sorted(candidates_with_scores, key=lambda c: c.index))
    deciding = config.deciding(s.scorer for c in group for s in c.scores)
    taking_part = [c for c in group if deciding is not None and c.value(deciding) is not None]
    if deciding is None or not taking_part:
        return Selection(prompt_key=key, prompt=prompt, candidates=group, sft=None, pair=None,
                         reasons=(NO_SCORED_CANDIDATES,), decided_by=deciding)

    def value(c: ScoredCandidate) -> float:
        v = c.value(deciding)
        assert v is not None
        return v

    ranks = group_ranks(taking_part)
    vetoed = tuple(c.index for c in taking_part if c.vetoed)
    audited = Selection(prompt_key=key, prompt=prompt, candidates=group, sft=None, pair=None, reasons=(),
                        decided_by=deciding, ranks=ranks, vetoed=vetoed)
    eligible = [c for c in taking_part if not c.vetoed]
    if not eligible:
        return replace(audited, reasons=(ALL_VETOED,))

    best = min(eligible, key=lambda c: (-ranks[c.index], -value(c), len(c.text), c.index))
    best_value = value(best)
    reasons: list[str] = []

    sft = None
    if best_value >= config.sft_threshold:
        sft = RSFTSample(
            sample_id=_digest(RSFT_BEST_OF_N, str(RULES[RSFT_BEST_OF_N]), key, str(best.index), best.text),
            rule=RSFT_BEST_OF_N, rule_version=RULES[RSFT_BEST_OF_N], prompt_key=key,
            messages=(*prompt, {"role": "assistant", "content": best.text}), candidate_index=best.index,
            value=best_value, scores=best.scores,
        )
    else:
        reasons.append(BELOW_SFT_THRESHOLD)

    others = [c for c in taking_part if c is not best]
    if not others:
        reasons.append(FEWER_THAN_TWO_SCORED)
        return replace(audited, sft=sft, reasons=tuple(reasons), best_index=best.index)

    worst = min(others, key=lambda c: (not c.vetoed, ranks[c.index], value(c), -len(c.text), c.index))
    margin = best_value - value(worst)
    pair = None
    if margin < -_TIE_EPSILON:
        reasons.append(DECIDER_PREFERS_REJECTED)
    elif margin <= _TIE_EPSILON:
        reasons.append(TIE)
    elif margin < config.min_margin:
        reasons.append(MARGIN_BELOW_MINIMUM)
    elif margin < config.length_guard_margin and _longer(best.text, worst.text, config.length_guard_ratio):
        reasons.append(LENGTH_GUARD)
    else:
        pair = DPOPair(
            pair_id=_digest(BEST_VS_WORST, str(RULES[BEST_VS_WORST]), key, str(best.index), str(worst.index),
                            best.text, worst.text),
            rule=BEST_VS_WORST, rule_version=RULES[BEST_VS_WORST], prompt_key=key, prompt=prompt,
            chosen=best.text, rejected=worst.text, chosen_index=best.index, rejected_index=worst.index,
            margin=margin, chosen_scores=best.scores, rejected_scores=worst.scores,
        )
    return replace(audited, sft=sft, pair=pair, reasons=tuple(reasons), best_index=best.index,
                   worst_index=worst.index, margin=margin)


def _longer(chosen: str, rejected: str, ratio: float) -> bool:
    return len(chosen) > ratio * len(rejected)


def length_bias(selections: Iterable[Selection]) -> LengthBias:
    """The share of selected pairs whose chosen text is longer, their mean length ratio, and how often the length
    guard fired."""
    selections = list(selections)
    pairs = [s.pair for s in selections if s.pair is not None]
    guarded = sum(1 for s in selections if LENGTH_GUARD in s.reasons)
    if not pairs:
        return LengthBias(pairs=0, chosen_longer=0, chosen_longer_share=0.0, mean_length_ratio=0.0,
                          length_guarded=guarded)
    longer = sum(1 for p in pairs if len(p.chosen) > len(p.rejected))
    ratios = [max(1, len(p.chosen)) / max(1, len(p.rejected)) for p in pairs]
    return LengthBias(pairs=len(pairs), chosen_longer=longer, chosen_longer_share=longer / len(pairs),
                      mean_length_ratio=math.fsum(ratios) / len(ratios), length_guarded=guarded)
