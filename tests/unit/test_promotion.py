"""Promotion gates: each gate's pass, fail and not-enough-data verdicts, and their determinism."""

from __future__ import annotations

import pytest

from flywheel.domain.quality import Judgement
from flywheel.domain.rounds import RoundConfig
from flywheel.domain.rounds.promotion import (
    HELD,
    PROMOTED,
    GateVerdict,
    PromotionConfig,
    agreement_gates,
    alpha_interval,
    contamination_gate,
    drift_gates,
    failing_slices,
    flagged_scorer_gate,
    length_bias_gates,
    position_bias_gates,
    row_gates,
    state_of,
)


def _thumbs(items: int, *, agree: bool, app: str = "support", model: str = "m1") -> list[Judgement]:
    """Two raters per item: the same value (agree) or opposite values (disagree), values alternating by item."""
    out = []
    for n in range(items):
        a = float(n % 2)
        b = a if agree else 1.0 - a
        item = f"{app}{model}i{n}"
        out += [Judgement(item, "r1", a, app, model), Judgement(item, "r2", b, app, model)]
    return out


def test_a_slice_whose_interval_lies_below_the_limit_fails_and_is_left_out() -> None:
    config = PromotionConfig(agreement_min_items=10)
    judgements = {"thumbs": _thumbs(40, agree=False, app="bad") + _thumbs(40, agree=True, app="good")}

    verdicts = agreement_gates(judgements, config, config_version="v1")

    by_app = {v.detail["app_id"]: v for v in verdicts}
    assert by_app["bad"].status == "fail" and by_app["bad"].detail["interval"][1] < 0.40
    assert by_app["good"].status == "pass" and by_app["good"].value == pytest.approx(1.0)
    assert failing_slices(verdicts) == {("bad", "m1")}
    assert not by_app["bad"].blocking  # its rows are left out; the round may still be promoted


def test_a_slice_with_too_few_items_is_not_enough_data_and_passes() -> None:
    verdicts = agreement_gates({"thumbs": _thumbs(5, agree=False)}, PromotionConfig(agreement_min_items=30),
                               config_version="v1")

    assert [(v.status, v.passed, v.detail["items"]) for v in verdicts] == [("not enough data", True, 5)]
    assert failing_slices(verdicts) == frozenset()


def test_the_bootstrap_interval_is_the_same_for_the_same_seed_and_brackets_alpha() -> None:
    rows = _thumbs(30, agree=True) + _thumbs(10, agree=False, model="m1")
    first = alpha_interval(rows, level="nominal", resamples=100, confidence=0.95, seed=7)
    again = alpha_interval(rows, level="nominal", resamples=100, confidence=0.95, seed=7)

    assert first == again
    assert first.low is not None and first.high is not None and first.alpha is not None
    assert first.low <= first.alpha <= first.high


def test_minimum_rows_per_kind() -> None:
    verdicts = row_gates({"sft": 5, "dpo": 0, "kto": 9}, PromotionConfig(min_sft_rows=5, min_dpo_rows=1))

    assert [(v.name, v.status) for v in verdicts] == [("min_rows:sft", "pass"), ("min_rows:dpo", "fail"),
                                                      ("min_rows:kto", "pass")]
    assert state_of(verdicts) == HELD


def test_length_bias_pass_fail_and_not_enough_data() -> None:
    config = PromotionConfig(min_bias_pairs=10)
    fine = length_bias_gates({"pairs": 50, "chosen_longer_rate": 0.55, "correlation": 0.1}, config)
    biased = length_bias_gates({"pairs": 50, "chosen_longer_rate": 0.95, "correlation": -0.95}, config)
    few = length_bias_gates({"pairs": 3, "chosen_longer_rate": 1.0, "correlation": 1.0}, config)

    assert [v.status for v in fine] == ["pass", "pass"]
    assert [v.status for v in biased] == ["fail", "fail"]
    assert [v.status for v in few] == ["not enough data", "not enough data"] and state_of(few) == PROMOTED


def test_position_bias_pass_fail_and_not_enough_data() -> None:
    config = PromotionConfig(min_bias_comparisons=10)
    fine = position_bias_gates({"comparisons": 100, "first_shown_win_rate": 0.52, "p_value": 0.76}, config)
    biased = position_bias_gates({"comparisons": 100, "first_shown_win_rate": 0.2, "p_value": 1e-9}, config)
    few = position_bias_gates({"comparisons": 0, "first_shown_win_rate": None, "p_value": None}, config)

    assert [v.status for v in fine] == ["pass", "pass"]
    assert [v.status for v in biased] == ["fail", "fail"]
    assert [v.status for v in few] == ["not enough data", "not enough data"]


def test_contamination_hit_rate() -> None:
    config = PromotionConfig(max_contamination_rate=0.1)

    assert contamination_gate(100, 10, config).status == "pass"
    assert contamination_gate(100, 11, config).status == "fail"
    assert contamination_gate(0, 0, config).status == "not enough data"


def test_drift_against_the_parent_by_kind_and_source() -> None:
    config = PromotionConfig(max_drift=0.5, min_drift_rows=10)
    verdicts = {v.name: v for v in drift_gates(
        {"sft": 100, "dpo": 40}, {"sft": {"edit": 100}, "dpo": {"edit": 40}},
        {"sft": 90, "dpo": 100}, {"sft": {"edit": 60, "rsft": 30}, "dpo": {"edit": 100}}, config)}

    assert verdicts["drift:rows:sft"].status == "pass"
    assert verdicts["drift:rows:sft"].value == pytest.approx(1 / 9, 1e-5)
    assert verdicts["drift:rows:dpo"].status == "fail"
    assert verdicts["drift:source:sft/edit"].status == "fail"  # 60 -> 100
    assert verdicts["drift:source:sft/rsft"].status == "fail"  # 30 -> 0
    orphan = drift_gates({"sft": 100}, {}, None, None, config)
    assert [v.status for v in orphan] == ["not enough data"]
    small = drift_gates({"sft": 3}, {}, {"sft": 9}, {}, config)
    assert [v.status for v in small] == ["not enough data"]


def test_a_verdict_lists_name_value_limit_blocking_and_passed() -> None:
    v = GateVerdict(name="min_rows:sft", value=3.0, limit=5.0, blocking=True, status="fail")

    assert v.as_dict() == {"name": "min_rows:sft", "value": 3.0, "limit": 5.0, "blocking": True, "passed": False,
                           "status": "fail"}
    assert state_of([GateVerdict(name="x", value=None, limit=1.0, blocking=False, status="fail")]) == PROMOTED


def test_the_promotion_config_is_part_of_the_config_version() -> None:
    assert RoundConfig(promotion=PromotionConfig(min_sft_rows=5)).version() != RoundConfig().version()
    assert RoundConfig(promotion={"max_drift": 1}).version() == RoundConfig(
        promotion=PromotionConfig(max_drift=1.0)).version()
    with pytest.raises(ValueError):
        PromotionConfig(max_drift=-1)


def test_rows_selected_by_a_flagged_scorer_fail_the_gate_each_row_once() -> None:
    selected = {"sft": {"llm_judge+reward_model": 4, "reward_model": 6}, "dpo": {"llm_judge": 3, "numeric_answer": 2}}
    clean = flagged_scorer_gate(selected, [], PromotionConfig())
    assert (clean.status, clean.value, clean.limit, clean.blocking) == ("pass", 0.0, 0.0, True)
    assert clean.detail["rows_by_scorer"] == {"llm_judge": 7, "numeric_answer": 2, "reward_model": 10}

    judge = flagged_scorer_gate(selected, ["llm_judge"], PromotionConfig())
    assert (judge.status, judge.value) == ("fail", 7.0)
    assert judge.detail["rows_by_kind"] == {"sft": 4, "dpo": 3} and judge.detail["flagged_scorers"] == ["llm_judge"]
    both = flagged_scorer_gate(selected, ["reward_model", "llm_judge"], PromotionConfig())
    assert both.value == 13.0  # the 4 rows both selected count once
    assert state_of([both]) == HELD

    tolerant = PromotionConfig(max_flagged_scorer_rows=7)
    assert flagged_scorer_gate(selected, ["llm_judge"], tolerant).status == "pass"
    advisory = flagged_scorer_gate(selected, ["llm_judge"], PromotionConfig(flagged_scorer_blocking=False))
    assert advisory.status == "fail" and not advisory.blocking and state_of([advisory]) == PROMOTED
    assert flagged_scorer_gate(selected, ["some_other_scorer"], PromotionConfig()).status == "pass"

    nothing = flagged_scorer_gate({"sft": {}, "dpo": {}}, ["llm_judge"], PromotionConfig())
    assert (nothing.status, nothing.passed) == ("not enough data", True)
    with pytest.raises(ValueError):
        PromotionConfig(max_flagged_scorer_rows=1.5)  # type: ignore[arg-type]
