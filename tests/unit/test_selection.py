"""Selection rules: RSFT best-of-n, best-vs-worst pairs with margin, tie and length-guard rules, length bias."""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.domain.signals import prompt_key
from sampling.selection import (
    BELOW_SFT_THRESHOLD,
    BEST_VS_WORST,
    FEWER_THAN_TWO_SCORED,
    LENGTH_GUARD,
    MARGIN_BELOW_MINIMUM,
    NO_SCORED_CANDIDATES,
    RSFT_BEST_OF_N,
    TIE,
    Score,
    ScoredCandidate,
    SelectionConfig,
    length_bias,
    score_group,
    select,
)
from sampling.verifiers import JsonFormatVerifier

PROMPT: tuple[dict[str, Any], ...] = ({"role": "user", "content": "What is 6 times 7?"},)
CONFIG = SelectionConfig(sft_threshold=0.8, min_margin=0.2, length_guard_margin=0.4, length_guard_ratio=1.2)


def cand(index: int, text: str, *values: float, scorer: str = "rm") -> ScoredCandidate:
    return ScoredCandidate(index=index, text=text,
                           scores=tuple(Score(scorer=scorer, version="7", value=v) for v in values))


def test_best_of_n_above_threshold_becomes_an_sft_sample_and_best_vs_worst_a_pair() -> None:
    group = [cand(0, "It is 41.", 0.1), cand(1, "It is 42.", 0.9), cand(2, "Maybe 40?", 0.5)]
    s = select(PROMPT, group, CONFIG)

    assert s.sft is not None
    assert s.sft.rule == RSFT_BEST_OF_N and s.sft.rule_version == 1
    assert s.sft.messages == (*PROMPT, {"role": "assistant", "content": "It is 42."})
    assert s.sft.candidate_index == 1 and s.sft.value == 0.9
    assert s.sft.scores == (Score(scorer="rm", version="7", value=0.9),)

    assert s.pair is not None
    assert s.pair.rule == BEST_VS_WORST
    assert (s.pair.chosen, s.pair.rejected) == ("It is 42.", "It is 41.")
    assert (s.pair.chosen_index, s.pair.rejected_index) == (1, 0)
    assert s.pair.margin == pytest.approx(0.8)
    assert s.pair.prompt == PROMPT and s.pair.prompt_key == prompt_key(PROMPT)
    assert s.reasons == ()
    # The full group is kept for RM/GRPO, in generation order whatever order it came in.
    assert [c.index for c in s.candidates] == [0, 1, 2]
    assert select(PROMPT, list(reversed(group)), CONFIG) == s


def test_best_below_threshold_gives_no_sft_sample_but_may_give_a_pair() -> None:
    s = select(PROMPT, [cand(0, "a", 0.7), cand(1, "b", 0.1)], CONFIG)
    assert s.sft is None
    assert s.pair is not None
    assert s.reasons == (BELOW_SFT_THRESHOLD,)


def test_threshold_is_inclusive() -> None:
    assert select(PROMPT, [cand(0, "a", 0.8)], CONFIG).sft is not None


def test_ties_are_dropped() -> None:
    s = select(PROMPT, [cand(0, "short", 0.9), cand(1, "a bit longer", 0.9), cand(2, "x", 0.9)], CONFIG)
    assert s.pair is None
    assert s.reasons == (TIE,)
    assert s.margin == 0.0
    assert s.sft is not None
    assert s.sft.candidate_index == 2  # among equal scores the shortest is the best


def test_margin_below_minimum_drops_the_pair() -> None:
    s = select(PROMPT, [cand(0, "same length A", 0.6), cand(1, "same length B", 0.45)], CONFIG)
    assert s.pair is None
    assert s.reasons == (BELOW_SFT_THRESHOLD, MARGIN_BELOW_MINIMUM)
    assert s.margin == pytest.approx(0.15)
    assert (s.best_index, s.worst_index) == (0, 1)


def test_margin_exactly_at_minimum_is_kept() -> None:
    config = SelectionConfig(sft_threshold=0.8, min_margin=0.25, length_guard_margin=0.25)
    s = select(PROMPT, [cand(0, "aaaa", 0.5), cand(1, "bbbb", 0.25)], config)
    assert s.pair is not None and s.pair.margin == 0.25


def test_length_guard_drops_a_small_margin_in_favour_of_the_longer_answer() -> None:
    short, long_ = "It is 42.", "It is 42, because six sevens are forty-two, as anyone can check."
    guarded = select(PROMPT, [cand(0, long_, 0.6), cand(1, short, 0.3)], CONFIG)  # margin 0.3 < 0.4
    assert guarded.pair is None
    assert LENGTH_GUARD in guarded.reasons

    # The same small margin for the shorter answer is kept: it cannot be length bias.
    kept = select(PROMPT, [cand(0, short, 0.6), cand(1, long_, 0.3)], CONFIG)
    assert kept.pair is not None and kept.pair.chosen == short

    # A large margin is trusted whatever the lengths.
    clear = select(PROMPT, [cand(0, long_, 0.9), cand(1, short, 0.3)], CONFIG)
    assert clear.pair is not None and clear.pair.chosen == long_


def test_length_guard_ratio_allows_slightly_longer_answers() -> None:
    # 11 vs 10 characters: within the 1.2 ratio, so not "longer" for the guard.
    s = select(PROMPT, [cand(0, "x" * 11, 0.6), cand(1, "y" * 10, 0.3)], CONFIG)
    assert s.pair is not None


def test_deciding_scorer_is_chosen_by_name_and_unscored_candidates_take_no_part() -> None:
    both = ScoredCandidate(index=0, text="a", scores=(Score(scorer="rm", version="1", value=0.2),
                                                      Score(scorer="judge", version="1", value=9.0)))
    judge_only = ScoredCandidate(index=1, text="b", scores=(Score(scorer="judge", version="1", value=2.0),))
    rm_only = ScoredCandidate(index=2, text="c", scores=(Score(scorer="rm", version="1", value=0.9),))
    by_judge = select(PROMPT, [both, judge_only, rm_only],
                      SelectionConfig(scorer="judge", sft_threshold=8, min_margin=1, length_guard_margin=1))
    assert by_judge.pair is not None and (by_judge.pair.chosen_index, by_judge.pair.rejected_index) == (0, 1)
    assert by_judge.sft is not None and by_judge.sft.candidate_index == 0
    assert len(by_judge.candidates) == 3

    by_rm = select(PROMPT, [both, judge_only, rm_only], SelectionConfig(scorer="rm"))
    assert by_rm.pair is not None and (by_rm.pair.chosen_index, by_rm.pair.rejected_index) == (2, 0)

    # Without a named scorer the mean decides: (0.2 + 9) / 2 = 4.6 for the first.
    assert both.value(None) == pytest.approx(4.6)


def test_nothing_scored_and_a_single_candidate() -> None:
    none = select(PROMPT, [cand(0, "a", scorer="other")], SelectionConfig(scorer="rm"))
    assert (none.sft, none.pair, none.reasons) == (None, None, (NO_SCORED_CANDIDATES,))
    one = select(PROMPT, [cand(0, "a", 0.95)], CONFIG)
    assert one.sft is not None and one.pair is None
    assert one.reasons == (FEWER_THAN_TWO_SCORED,)


def test_config_rejects_inconsistent_margins() -> None:
    with pytest.raises(ValueError):
        SelectionConfig(min_margin=0.5, length_guard_margin=0.1)
    with pytest.raises(ValueError):
        SelectionConfig(length_guard_ratio=0.9)


def test_length_bias_reports_share_ratio_and_guarded_groups() -> None:
    selections = [
        select(PROMPT, [cand(0, "x" * 20, 0.9), cand(1, "y" * 10, 0.1)], CONFIG),  # chosen longer, ratio 2
        select(PROMPT, [cand(0, "x" * 10, 0.9), cand(1, "y" * 20, 0.1)], CONFIG),  # chosen shorter, ratio 0.5
        select(PROMPT, [cand(0, "x" * 30, 0.9), cand(1, "y" * 10, 0.1)], CONFIG),  # chosen longer, ratio 3
        select(PROMPT, [cand(0, "x" * 30, 0.5), cand(1, "y" * 10, 0.2)], CONFIG),  # guarded: no pair
        select(PROMPT, [cand(0, "x", 0.5), cand(1, "y", 0.5)], CONFIG),  # tie: no pair
    ]
    report = length_bias(selections)
    assert report.pairs == 3
    assert report.chosen_longer == 2
    assert report.chosen_longer_share == pytest.approx(2 / 3)
    assert report.mean_length_ratio == pytest.approx((2 + 0.5 + 3) / 3)
    assert report.length_guarded == 1
    empty = length_bias([])
    assert (empty.pairs, empty.chosen_longer_share, empty.mean_length_ratio) == (0, 0.0, 0.0)


class LengthScorer:
    """A deliberately length-biased fake reward model."""

    name = "fake_rm"
    version = "3"

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [len(c) / 100 for c in completions]


def test_score_group_records_scorer_name_version_and_reasons() -> None:
    completions = ['{"answer": 42}', "not json at all"]
    group = score_group([LengthScorer(), JsonFormatVerifier()], PROMPT, completions)
    assert [c.text for c in group] == completions
    first, second = group
    assert first.scores[0] == Score(scorer="fake_rm", version="3", value=0.14)
    assert first.scores[1] == Score(scorer="json_format", version="1", value=1.0)
    assert second.scores[1].value == 0.0 and second.scores[1].reason.startswith("invalid_json")

    s = select(PROMPT, group, SelectionConfig(scorer="json_format", sft_threshold=1.0, min_margin=0.5,
                                              length_guard_margin=0.5))
    assert s.pair is not None and s.pair.chosen == '{"answer": 42}'
    assert s.pair.chosen_scores == first.scores


def test_score_group_refuses_a_scorer_that_loses_completions() -> None:
    class Broken(LengthScorer):
        def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
            return [1.0]

    with pytest.raises(ValueError, match="fake_rm"):
        score_group([Broken()], PROMPT, ["a", "b"])
