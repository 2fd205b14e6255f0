"""Pairwise agreement between users and scorers: kappa and alpha against the reference libraries, seeded bootstrap
intervals, the canonical orientation of a pair, and the probe audit's accuracy, drift and flag."""

from __future__ import annotations

import random

import numpy as np
import pytest

from flywheel.domain.pairwise import (
    FIRST,
    SECOND,
    TIE,
    USERS,
    PairJudgement,
    bootstrap_interval,
    cohen_kappa,
    krippendorff_alpha,
    orient,
    pairwise_agreement,
    pairwise_agreement_by,
    scorer_preference,
    user_preference,
)
from sampling.probes import CATEGORIES, audit_probes, parse_probes, probe_set_version, shipped_probes


def _answers(seed: int, n: int, agree: float) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.choice([FIRST, TIE, SECOND])
        out.append((a, a if rng.random() < agree else rng.choice([FIRST, TIE, SECOND])))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_equals_statsmodels(seed: int) -> None:
    from statsmodels.stats.inter_rater import cohens_kappa

    answers = _answers(seed, 60, 0.6)
    cats = [SECOND, TIE, FIRST]
    table = np.zeros((3, 3))
    for a, b in answers:
        table[cats.index(a), cats.index(b)] += 1
    assert cohen_kappa(answers) == pytest.approx(float(cohens_kappa(table, return_results=False)))


@pytest.mark.parametrize("seed", range(5))
def test_krippendorff_alpha_equals_the_krippendorff_package_with_missing_answers(seed: int) -> None:
    import krippendorff

    rng = random.Random(seed)
    raters, items = 3, 40
    data = np.full((raters, items), np.nan)
    units = []
    for i in range(items):
        truth = rng.choice([FIRST, TIE, SECOND])
        unit = []
        for r in range(raters):
            if rng.random() < 0.2:
                continue
            v = truth if rng.random() < 0.7 else rng.choice([FIRST, TIE, SECOND])
            data[r, i] = v
            unit.append(v)
        units.append(unit)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha(units) == pytest.approx(float(expected))


def test_undefined_figures_are_none_not_errors() -> None:
    assert cohen_kappa([]) is None
    assert cohen_kappa([(FIRST, FIRST)] * 5) is None  # one category: chance agreement is 1
    assert krippendorff_alpha([[FIRST, FIRST], [FIRST, FIRST]]) is None
    assert krippendorff_alpha([[FIRST]]) is None


def test_the_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    answers = _answers(1, 80, 0.7)
    once = bootstrap_interval(answers, cohen_kappa, resamples=300, seed=7)  # type: ignore[arg-type]
    again = bootstrap_interval(answers, cohen_kappa, resamples=300, seed=7)  # type: ignore[arg-type]
    other = bootstrap_interval(answers, cohen_kappa, resamples=300, seed=8)  # type: ignore[arg-type]
    kappa = cohen_kappa(answers)
    assert once == again and once != other
    assert once[0] is not None and once[1] is not None and kappa is not None
    assert once[0] < kappa < once[1]


def test_more_items_give_a_narrower_interval() -> None:
    small = bootstrap_interval(_answers(2, 30, 0.7), cohen_kappa, resamples=300)  # type: ignore[arg-type]
    large = bootstrap_interval(_answers(2, 600, 0.7), cohen_kappa, resamples=300)  # type: ignore[arg-type]
    assert small[0] is not None and small[1] is not None and large[0] is not None and large[1] is not None
    assert large[1] - large[0] < small[1] - small[0]


def test_orientation_does_not_depend_on_which_side_won() -> None:
    first, second, chosen_first = orient("short answer", "long answer")
    assert orient("long answer", "short answer")[:2] == (first, second)
    assert orient("long answer", "short answer")[2] is not chosen_first
    assert user_preference(True, False) == FIRST and user_preference(False, False) == SECOND
    assert user_preference(True, True) == TIE


def test_a_scorer_prefers_the_side_it_values_more_and_no_score_is_no_answer() -> None:
    assert scorer_preference(9.0, 2.0) == FIRST
    assert scorer_preference(2.0, 9.0) == SECOND
    assert scorer_preference(5.0, 5.0) == TIE
    assert scorer_preference(None, 5.0) is None and scorer_preference(5.0, float("nan")) is None


def _panel(n: int, judge_agrees: float, seed: int = 0, app: str = "support") -> list[PairJudgement]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = rng.choice([FIRST, SECOND])
        judge = user if rng.random() < judge_agrees else (SECOND if user == FIRST else FIRST)
        out += [PairJudgement(f"{app}-p{i}", USERS, user, app, "m1", "3"),
                PairJudgement(f"{app}-p{i}", "llm_judge", judge, app, "m1", "3"),
                PairJudgement(f"{app}-p{i}", "reward_model", user, app, "m1", "3")]
    out.append(PairJudgement(f"{app}-lonely", USERS, FIRST, app, "m1", "3"))  # no machine judged it: not an item
    return out


def test_agreement_per_rater_pair_and_over_all_raters() -> None:
    result = pairwise_agreement(_panel(60, 0.5), resamples=200)

    assert result.items == 60 and result.raters == ("llm_judge", "reward_model", USERS)
    by_pair = {p.raters: p for p in result.rater_pairs}
    users_rm = by_pair[("reward_model", USERS)]
    assert users_rm.agreement_rate == 1.0 and users_rm.cohen_kappa is not None
    assert users_rm.cohen_kappa.value == pytest.approx(1.0)
    judge_users = by_pair[("llm_judge", USERS)].cohen_kappa
    assert judge_users is not None and judge_users.value < 0.5 and judge_users.band == "poor"
    assert judge_users.low is not None and judge_users.high is not None and judge_users.low < judge_users.high
    assert result.krippendorff_alpha is not None and 0 < result.krippendorff_alpha.value < 1


def test_agreement_is_grouped_by_app_and_deterministic() -> None:
    judgements = _panel(40, 0.9, app="support") + _panel(40, 0.1, seed=1, app="code")
    by_app = pairwise_agreement_by(judgements, "app_id", resamples=100)
    assert list(by_app) == ["code", "support"]
    kappa = {app: {p.raters: p.cohen_kappa for p in a.rater_pairs}[("llm_judge", USERS)]
             for app, a in by_app.items()}
    assert kappa["support"] is not None and kappa["code"] is not None
    assert kappa["support"].value > 0.6 > kappa["code"].value
    assert pairwise_agreement_by(judgements, "app_id", resamples=100) == by_app


# ---- the bias probes ----


def test_the_shipped_probe_set_has_a_few_dozen_pairs_in_every_category() -> None:
    probes = shipped_probes()
    assert 30 <= len(probes) <= 60
    assert {p.category for p in probes} == set(CATEGORIES)
    assert all(sum(p.category == c for p in probes) >= 10 for c in CATEGORIES)
    short = [p for p in probes if p.category == "short_correct_vs_long_vapid"]
    assert all(len(p.better) < len(p.worse) for p in short)
    assert len(probe_set_version(probes)) == 16


def test_a_bad_probe_line_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown category"):
        parse_probes(['{"id": "x", "category": "tone", "prompt": "p", "better": "a", "worse": "b"}'])
    with pytest.raises(ValueError, match="two different"):
        parse_probes(['{"id": "x", "category": "refusal", "prompt": "p", "better": "a", "worse": "a"}'])


def test_a_length_biased_scorer_fails_the_length_probes_and_is_flagged() -> None:
    probes = shipped_probes()
    # Values its own length: right wherever the better answer is the longer one, wrong on every length probe.
    values = [(float(len(p.better)), float(len(p.worse))) for p in probes]
    audit = audit_probes("reward_model", "rm-1", probes, values, previous=None, min_accuracy=0.8)
    assert audit.by_category["short_correct_vs_long_vapid"] == 0.0
    assert audit.accuracy < 0.8 and audit.flagged
    assert audit.previous_accuracy is None and audit.drift is None
    assert "length-01" in audit.wrong


def test_drift_is_against_the_previous_run_on_the_same_probe_set() -> None:
    probes = shipped_probes()
    perfect = [(9.0, 1.0)] * len(probes)
    first = audit_probes("llm_judge", "j1", probes, perfect, previous=None)
    assert first.accuracy == 1.0 and not first.flagged
    worse = [(1.0, 9.0)] * 9 + [(5.0, 5.0)] + [(None, 3.0)] + perfect[11:]
    second = audit_probes("llm_judge", "j2", probes, worse,
                          previous={"probe_set": first.probe_set, "accuracy": first.accuracy})
    assert second.correct == len(probes) - 11 and second.no_score == 1
    assert second.drift == pytest.approx(-11 / len(probes))
    other_set = audit_probes("llm_judge", "j2", probes, worse, previous={"probe_set": "old", "accuracy": 0.5})
    assert other_set.previous_accuracy is None and other_set.drift is None


def test_rounds_are_listed_as_numbers_and_the_next_round_last() -> None:
    judgements = [j._replace(round=r, item_id=f"{r}-{j.item_id}") for r in ("10", "next", "9")
                  for j in _panel(5, 0.8)]
    assert list(pairwise_agreement_by(judgements, "round", resamples=20)) == ["9", "10", "next"]
