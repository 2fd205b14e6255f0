"""Selection rules: RSFT best-of-n, best-vs-worst pairs with margin, tie and length-guard rules, length bias; scorers
combined by rank, verifiers' vetoes, and a judge's "no score"."""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.domain.signals import prompt_key
from sampling.judge import JudgeScorer
from sampling.selection import (
    ALL_VETOED,
    BELOW_SFT_THRESHOLD,
    BEST_VS_WORST,
    DECIDER_PREFERS_REJECTED,
    FEWER_THAN_TWO_SCORED,
    LENGTH_GUARD,
    MARGIN_BELOW_MINIMUM,
    NO_SCORED_CANDIDATES,
    RSFT_BEST_OF_N,
    TIE,
    NoDecidingScorer,
    Score,
    ScoredCandidate,
    SelectionConfig,
    group_ranks,
    length_bias,
    score_group,
    select,
    threshold_problem,
)
from sampling.verifiers import UNPARSEABLE_JUDGEMENT, JsonFormatVerifier, NumericAnswerVerifier

PROMPT: tuple[dict[str, Any], ...] = ({"role": "user", "content": "What is 6 times 7?"},)
CONFIG = SelectionConfig(sft_threshold=0.8, min_margin=0.2, length_guard_margin=0.4, length_guard_ratio=1.2)


def cand(index: int, text: str, *values: float, scorer: str = "rm") -> ScoredCandidate:
    return ScoredCandidate(index=index, text=text,
                           scores=tuple(Score(scorer=scorer, version="7", value=v) for v in values))


def test_best_of_n_above_threshold_becomes_an_sft_sample_and_best_vs_worst_a_pair() -> None:
    group = [cand(0, "It is 41.", 0.1), cand(1, "It is 42.", 0.9), cand(2, "Maybe 40?", 0.5)]
    s = select(PROMPT, group, CONFIG)

    assert s.sft is not None
    assert s.sft.rule == RSFT_BEST_OF_N and s.sft.rule_version == 2
    assert s.sft.messages == (*PROMPT, {"role": "assistant", "content": "It is 42."})
    assert s.sft.candidate_index == 1 and s.sft.value == 0.9
    assert s.sft.scores == (Score(scorer="rm", version="7", value=0.9),)
    assert s.decided_by == "rm" and s.ranks == {0: 0.0, 1: 1.0, 2: 0.5} and s.vetoed == ()

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


def test_scores_on_several_scales_without_a_deciding_scorer_are_refused_not_averaged() -> None:
    both = ScoredCandidate(index=0, text="a", scores=(Score(scorer="rm", version="1", value=0.2),
                                                      Score(scorer="llm_judge", version="1", value=9.0)))
    with pytest.raises(NoDecidingScorer, match="llm_judge, rm"):
        select(PROMPT, [both], SelectionConfig())


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
    assert second.scores[1].veto and not first.scores[1].veto

    s = select(PROMPT, group, SelectionConfig(scorer="json_format", sft_threshold=1.0, min_margin=0.5,
                                              length_guard_margin=0.5))
    assert s.pair is not None and s.pair.chosen == '{"answer": 42}'
    assert s.pair.chosen_scores == first.scores


def test_a_verifier_failure_is_recorded_as_a_veto() -> None:
    [right, wrong, silent] = score_group([NumericAnswerVerifier("42")], PROMPT, ["42", "41", "no idea"])
    assert not right.vetoed and right.scores[0].value == 1.0
    assert wrong.vetoed and wrong.scores[0].reason == "wrong_answer: 41"
    assert silent.vetoed and silent.scores[0].reason == "no_number"


def test_score_group_refuses_a_scorer_that_loses_completions() -> None:
    class Broken(LengthScorer):
        def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
            return [1.0]

    with pytest.raises(ValueError, match="fake_rm"):
        score_group([Broken()], PROMPT, ["a", "b"])


# ---- a judge's "no score", rank combination, vetoes ----


def judged(index: int, text: str, grade: float | None, *more: Score) -> ScoredCandidate:
    reason = "" if grade is not None else UNPARSEABLE_JUDGEMENT
    return ScoredCandidate(index=index, text=text, scores=(
        Score(scorer="llm_judge", version="2+j+rubric.x", value=grade, reason=reason), *more))


JUDGE_DECIDES = SelectionConfig(scorer="llm_judge", sft_threshold=8, min_margin=2, length_guard_margin=2)


def test_a_judge_reply_that_does_not_parse_neither_makes_nor_breaks_a_pair() -> None:
    """The issue's case: graded 9 and 2, one reply unparseable. It used to score 0 and be the rejected side
    with margin 9; as "no score" it takes no part, and the pair is the two graded answers, margin 7."""
    group = [judged(0, "It is 42.", 9), judged(1, "It is 41.", 2), judged(2, "It is 40.", None)]
    s = select(PROMPT, group, JUDGE_DECIDES)
    assert s.pair is not None
    assert (s.pair.chosen_index, s.pair.rejected_index, s.pair.margin) == (0, 1, 7.0)
    assert 2 not in s.ranks and s.worst_index == 1
    assert len(s.candidates) == 3  # the ungraded one stays in the group, with its reason, for audits
    assert s.candidates[2].scores[0].value is None and s.candidates[2].scores[0].reason == UNPARSEABLE_JUDGEMENT

    # Nor can it be the best: with one grade left there is an SFT sample at most, never a pair.
    lone = select(PROMPT, [judged(0, "a", None), judged(1, "b", 8)], JUDGE_DECIDES)
    assert lone.pair is None and lone.sft is not None and lone.sft.candidate_index == 1
    assert lone.reasons == (FEWER_THAN_TWO_SCORED,)
    nothing = select(PROMPT, [judged(0, "a", None), judged(1, "b", None)], JUDGE_DECIDES)
    assert (nothing.sft, nothing.pair, nothing.reasons) == (None, None, (NO_SCORED_CANDIDATES,))


def test_a_missing_grade_does_not_sink_a_candidate_another_scorer_ranks() -> None:
    """Reward model decides, the judge ranks too: the ungraded candidate is ranked by the reward model alone."""
    def rm(v: float) -> Score:
        return Score(scorer="reward_model", version="1", value=v)

    group = [judged(0, "aaaa", None, rm(3.0)), judged(1, "bbbb", 9, rm(1.0)), judged(2, "cccc", 2, rm(-1.0))]
    s = select(PROMPT, group, SelectionConfig(scorer="reward_model", sft_threshold=0.5, min_margin=1,
                                                   length_guard_margin=1))
    assert s.ranks == {0: 1.0, 1: 0.75, 2: 0.0}
    assert s.pair is not None and (s.pair.chosen_index, s.pair.rejected_index) == (0, 2)
    assert s.pair.margin == 4.0


def test_scorers_on_different_scales_are_combined_by_rank_and_thresholds_stay_on_the_deciders_scale() -> None:
    """Raw values would let the reward model's logits drown the judge's grades (a mean picks 0 over 1); ranks
    weigh the two alike."""
    def both(index: int, logit: float, grade: float) -> ScoredCandidate:
        return ScoredCandidate(index=index, text=f"answer {index}", scores=(
            Score(scorer="reward_model", version="1", value=logit),
            Score(scorer="llm_judge", version="1", value=grade)))

    group = [both(0, 30.0, 1), both(1, 1.0, 10), both(2, 0.0, 9)]
    assert group_ranks(group) == {0: 0.5, 1: 0.75, 2: 0.25}
    by_judge = select(PROMPT, group, JUDGE_DECIDES)
    assert (by_judge.best_index, by_judge.worst_index) == (1, 2)
    assert by_judge.sft is not None and by_judge.sft.value == 10  # 10 >= 8, on the judge's scale
    assert by_judge.margin == 1.0 and by_judge.reasons == (MARGIN_BELOW_MINIMUM,)  # 10 - 9 < 2 grades
    by_rm = select(PROMPT, group, SelectionConfig(scorer="reward_model", sft_threshold=2.0, min_margin=0.5,
                                                   length_guard_margin=0.5))
    assert (by_rm.best_index, by_rm.worst_index, by_rm.margin) == (1, 2, 1.0)  # same ranks, the RM's scale
    assert by_rm.sft is None and by_rm.pair is not None and by_rm.reasons == (BELOW_SFT_THRESHOLD,)


def test_group_ranks_share_ties_and_ignore_a_scorer_that_orders_nothing() -> None:
    group = [cand(0, "a", 1.0), cand(1, "b", 1.0), cand(2, "c", 0.0), cand(3, "d", 5.0)]
    assert group_ranks(group) == {0: 0.5, 1: 0.5, 2: 0.0, 3: 1.0}
    lone = [cand(0, "a", 1.0), cand(1, "b", scorer="other")]
    assert group_ranks(lone) == {0: 0.5, 1: 0.5}


def passes(ok: bool) -> Score:
    return Score(scorer="python_tests", version="1", value=1.0 if ok else 0.0, veto=not ok,
                 reason="" if ok else "tests_failed: exit 1")


def test_a_failed_check_is_never_best_nor_chosen_however_the_others_score_it() -> None:
    def rm(index: int, logit: float, ok: bool) -> ScoredCandidate:
        return ScoredCandidate(index=index, text=f"def f(): {index}", scores=(
            Score(scorer="reward_model", version="1", value=logit), passes(ok)))

    by_rm = SelectionConfig(scorer="reward_model", sft_threshold=0.5, min_margin=0.5, length_guard_margin=0.5)
    group = [rm(0, 9.0, False), rm(1, 1.0, True), rm(2, 0.0, True)]
    s = select(PROMPT, group, by_rm)
    assert s.vetoed == (0,)
    assert s.best_index == 1 and s.sft is not None and s.sft.candidate_index == 1
    # The failing answer is the rejected side; the reward model prefers it, so no pair is trusted.
    assert s.worst_index == 0 and s.pair is None and s.reasons == (DECIDER_PREFERS_REJECTED,)

    by_tests = select(PROMPT, group, SelectionConfig(scorer="python_tests", sft_threshold=1, min_margin=1,
                                                      length_guard_margin=1))
    assert by_tests.pair is not None and (by_tests.pair.chosen_index, by_tests.pair.rejected_index) == (1, 0)

    failing = select(PROMPT, [rm(0, 9.0, False), rm(1, 8.0, False)], by_rm)
    assert (failing.sft, failing.pair, failing.reasons, failing.vetoed) == (None, None, (ALL_VETOED,), (0, 1))


def test_thresholds_off_the_deciding_scorers_scale_are_a_configuration_error() -> None:
    assert threshold_problem(SelectionConfig(sft_threshold=0.8, min_margin=0.2), "llm_judge") == (
        "the SFT threshold 0.8 is off llm_judge's scale 1-10")
    assert threshold_problem(SelectionConfig(sft_threshold=8, min_margin=2, length_guard_margin=2),
                             "numeric_answer") == "the SFT threshold 8 is off numeric_answer's scale 0-1"
    assert "minimum margin 2" in str(threshold_problem(
        SelectionConfig(sft_threshold=1, min_margin=2, length_guard_margin=2), "python_tests"))
    assert threshold_problem(JUDGE_DECIDES, "llm_judge") is None
    assert threshold_problem(SelectionConfig(sft_threshold=-40.0), "reward_model") is None  # logits: unbounded


class Replies:
    """A judge model that answers with canned replies."""

    def __init__(self, *replies: str) -> None:
        self.replies = replies

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def generate(self, prompts: list[list[dict[str, Any]]], spec: Any) -> list[Any]:
        from sampling.generation import Candidate

        class Group:
            def __init__(self, text: str) -> None:
                self.candidates = (Candidate(text=text, token_count=1, cumulative_logprob=None, finish_reason="stop"),)

        return [Group(r) for r in self.replies[:len(prompts)]]


def test_score_group_stores_the_judges_name_version_rubric_hash_and_rationale() -> None:
    judge = JudgeScorer(Replies('{"rationale": "Correct.", "score": 9}', "Score: 10 (trust me)"),
                        "Reward correct arithmetic.", None, model="judge-7b", model_version="j3")
    graded, broken = score_group([judge], PROMPT, ["42", "41"])
    assert graded.scores == (Score(scorer="llm_judge", version=judge.version, value=9.0, rationale="Correct.",
                                   judge_model="judge-7b", rubric_hash=judge.rubric_hash),)
    assert judge.version == f"2+j3+rubric.{judge.rubric_hash}"
    assert broken.scores[0].value is None and broken.scores[0].reason == UNPARSEABLE_JUDGEMENT
    assert broken.scores[0].judge_model == "judge-7b"
