"""Selection over a scored candidate group: RSFT best-of-n samples and best-vs-worst DPO pairs with margin rules."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flywheel.domain.signals import prompt_key
from sampling.verifiers import ExplainingScorer, Verdict

if TYPE_CHECKING:
    from sampling.verifiers import Scorer

# Every selection rule has a name and an integer version, like the signal rules; bump on a change of meaning.
RSFT_BEST_OF_N = "rsft_best_of_n"
BEST_VS_WORST = "best_vs_worst"
RULES: Mapping[str, int] = {RSFT_BEST_OF_N: 1, BEST_VS_WORST: 1}

# Why a group gave no SFT sample or no pair.
NO_SCORED_CANDIDATES = "no_scored_candidates"
BELOW_SFT_THRESHOLD = "below_sft_threshold"
FEWER_THAN_TWO_SCORED = "fewer_than_two_scored"
TIE = "tie"
MARGIN_BELOW_MINIMUM = "margin_below_minimum"
LENGTH_GUARD = "length_guard"

_TIE_EPSILON = 1e-9  # scores this close are equal: float noise must not make a pair


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """One scorer's value for one candidate, with the scorer's name and version for lineage."""

    scorer: str
    version: str
    value: float
    reason: str = ""  # why the scorer gave this value when it could not judge normally (e.g. unparseable)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoredCandidate:
    """One generated completion of a group and every score it received."""

    index: int  # position in the generated group
    text: str
    scores: tuple[Score, ...]

    def value(self, scorer: str | None) -> float | None:
        """The named scorer's value, or the mean of all values when `scorer` is None; None when missing."""
        if scorer is None:
            return math.fsum(s.value for s in self.scores) / len(self.scores) if self.scores else None
        values = [s.value for s in self.scores if s.scorer == scorer]
        return values[0] if values else None


@dataclass(frozen=True, kw_only=True)
class SelectionConfig:
    """Thresholds of the selection rules, on the scale of the deciding scorer.

    The length guard: a pair whose margin is at least `min_margin` but below `length_guard_margin`, and whose
    chosen text is more than `length_guard_ratio` times as long (in characters) as the rejected one, is dropped.
    A small score gap in favour of the longer answer is the signature of a length-biased scorer, not of a better
    answer; a large gap is trusted whatever the lengths.
    """

    sft_threshold: float = 0.8
    min_margin: float = 0.2
    length_guard_margin: float = 0.4
    length_guard_ratio: float = 1.2
    scorer: str | None = None  # the scorer whose value decides; None: the mean of a candidate's scores

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
    margin: float | None = None


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
    """Run every scorer over a group's completions and record each value with its scorer's name and version."""
    messages = [dict(m) for m in prompt_messages]
    per_scorer = []
    for scorer in scorers:
        if isinstance(scorer, ExplainingScorer):
            verdicts = scorer.verdicts(messages, list(completions))
        else:
            verdicts = [Verdict(value=float(v)) for v in scorer.score(messages, list(completions))]
        if len(verdicts) != len(completions):
            raise ValueError(f"scorer {scorer.name} gave {len(verdicts)} values for {len(completions)} completions")
        per_scorer.append([Score(scorer=scorer.name, version=scorer.version, value=v.value, reason=v.reason)
                           for v in verdicts])
    return tuple(ScoredCandidate(index=i, text=text, scores=tuple(s[i] for s in per_scorer))
                 for i, text in enumerate(completions))


def select(group_prompt: Sequence[Mapping[str, Any]], candidates_with_scores: Iterable[ScoredCandidate],
           config: SelectionConfig) -> Selection:
    """Apply the RSFT and best-vs-worst rules to one scored group.

    Best: the highest value; among equal values the shorter text, then the lower index. Worst: the lowest value;
    among equal values the longer text, then the lower index. Both tie-breaks lean against length bias.
    RSFT: the best becomes an SFT sample when its value >= `sft_threshold`.
    Pair: best over worst when margin = best - worst is not a tie (> 1e-9), is >= `min_margin`, and passes the
    length guard (see SelectionConfig). Candidates without the deciding score take no part.
    """
    prompt = tuple(dict(m) for m in group_prompt)
    key = prompt_key(prompt)
    group = tuple(sorted(candidates_with_scores, key=lambda c: c.index))
    scored = [(c, v) for c in group if (v := c.value(config.scorer)) is not None and math.isfinite(v)]
    if not scored:
        return Selection(prompt_key=key, prompt=prompt, candidates=group, sft=None, pair=None,
                         reasons=(NO_SCORED_CANDIDATES,))

    best, best_value = min(scored, key=lambda cv: (-cv[1], len(cv[0].text), cv[0].index))
    worst, worst_value = min(scored, key=lambda cv: (cv[1], -len(cv[0].text), cv[0].index))
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

    if len(scored) < 2:
        reasons.append(FEWER_THAN_TWO_SCORED)
        return Selection(prompt_key=key, prompt=prompt, candidates=group, sft=sft, pair=None, reasons=tuple(reasons),
                         best_index=best.index)

    margin = best_value - worst_value
    pair = None
    if margin <= _TIE_EPSILON:
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
    return Selection(prompt_key=key, prompt=prompt, candidates=group, sft=sft, pair=pair, reasons=tuple(reasons),
                     best_index=best.index, worst_index=worst.index, margin=margin)


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
