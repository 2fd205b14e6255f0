"""Agreement figures against textbook values, bias audits on hand-made pairs, and simulated rater panels."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import orjson
import pytest

from flywheel.domain.quality import (
    BANDS,
    Judgement,
    agreement,
    agreement_by,
    band,
    fair_coin_p_value,
    fleiss_kappa_unequal,
    judgements_from,
    length_bias,
    position_bias,
)
from flywheel.domain.signals import FeedbackRecord, InteractionRecord, PreferencePair
from flywheel.domain.wire import Interaction
from flywheel.simulator import APPS, generate

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# ---- bands ----


@pytest.mark.parametrize(("value", "name"), [
    (-0.3, "poor"), (0.0, "poor"), (0.399, "poor"), (0.40, "fair"), (0.599, "fair"),
    (0.60, "moderate"), (0.749, "moderate"), (0.75, "strong"), (1.0, "strong"),
])
def test_band_cut_offs(value: float, name: str) -> None:
    assert band(value) == name


def test_bands_are_ordered_and_named_once() -> None:
    uppers = [upper for upper, _ in BANDS]
    assert uppers == sorted(uppers) and uppers[:3] == [0.40, 0.60, 0.75]
    assert [name for _, name in BANDS] == ["poor", "fair", "moderate", "strong"]


# ---- textbook values ----


def test_cohen_kappa_of_the_classic_two_by_two_table() -> None:
    # 50 proposals, two readers: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.70, p_e 0.50, kappa 0.40.
    cells = [(1, 1)] * 20 + [(1, 0)] * 5 + [(0, 1)] * 10 + [(0, 0)] * 15
    judgements = [j for n, (a, b) in enumerate(cells) for j in ((f"p{n}", "a", a), (f"p{n}", "b", b))]

    result = agreement(judgements)

    assert result.level == "nominal" and (result.items, result.raters, result.judgements) == (50, 2, 100)
    assert result.cohen_kappa is not None
    assert result.cohen_kappa.value == pytest.approx(0.40)
    assert (result.cohen_kappa.band, result.cohen_kappa.items, result.cohen_kappa.raters) == ("fair", 50, 2)


FLEISS_TABLE = [  # 10 subjects, 14 raters each, 5 categories: Fleiss' kappa 0.210
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_of_the_classic_fourteen_rater_table() -> None:
    judgements = []
    for subject, row in enumerate(FLEISS_TABLE):
        raters = iter(range(14))
        judgements += [(f"s{subject}", f"r{next(raters)}", category / 4)
                       for category, count in enumerate(row) for _ in range(count)]

    result = agreement(judgements)

    assert result.fleiss_kappa is not None
    assert result.fleiss_kappa.value == pytest.approx(0.2099, abs=1e-4)
    assert (result.fleiss_kappa.band, result.fleiss_kappa.items, result.fleiss_kappa.raters) == ("poor", 10, 14)
    assert result.cohen_kappa is None  # no item has exactly two raters


def test_fleiss_for_unequal_panels_reduces_to_fleiss_and_matches_a_hand_computation() -> None:
    assert fleiss_kappa_unequal(np.array(FLEISS_TABLE)) == pytest.approx(0.2099, abs=1e-4)
    # Panels of 3, 2 and 2: per-item agreement 1, 0, 1; category shares 4/7 and 3/7 -> kappa 23/72.
    judgements = [("a", "r1", 1), ("a", "r2", 1), ("a", "r3", 1), ("b", "r1", 1), ("b", "r2", 0),
                  ("c", "r2", 0), ("c", "r3", 0)]

    result = agreement(judgements)

    assert result.fleiss_kappa is not None and result.fleiss_kappa.value == pytest.approx(23 / 72)
    assert fleiss_kappa_unequal(np.array([[0, 1]])) is None  # one rater: no pairs to agree


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, missing values.
KRIPPENDORFF_DATA = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


@pytest.mark.parametrize(("level", "alpha"), [("nominal", 0.743), ("ordinal", 0.815)])
def test_krippendorff_alpha_of_the_reference_example(level: Any, alpha: float) -> None:
    judgements = [(f"unit{u}", f"coder{c}", v) for c, row in enumerate(KRIPPENDORFF_DATA)
                  for u, v in enumerate(row) if v is not None]

    result = agreement(judgements, level=level)

    assert result.krippendorff_alpha is not None
    assert result.krippendorff_alpha.value == pytest.approx(alpha, abs=1e-3)
    assert result.items == 11  # unit 12 has one coder: it cannot show agreement


# ---- edge cases ----


def test_perfect_agreement_is_one_everywhere() -> None:
    judgements = [(f"i{n}", rater, n % 2) for n in range(6) for rater in ("a", "b")]
    judgements += [(f"j{n}", rater, n % 2) for n in range(4) for rater in ("a", "b", "c")]

    result = agreement(judgements)

    for figure in (result.cohen_kappa, result.fleiss_kappa, result.krippendorff_alpha):
        assert figure is not None and figure.value == pytest.approx(1.0) and figure.band == "strong"


def test_systematic_disagreement_is_negative_and_poor() -> None:
    judgements = [j for n in range(8) for j in ((f"i{n}", "a", n % 2), (f"i{n}", "b", 1 - n % 2))]

    result = agreement(judgements)

    assert result.cohen_kappa is not None and result.cohen_kappa.value == pytest.approx(-1.0)
    assert result.krippendorff_alpha is not None and result.krippendorff_alpha.value < 0
    assert result.cohen_kappa.band == "poor"


def test_too_little_data_gives_none_not_an_exception() -> None:
    empty = agreement([])
    single_raters = agreement([("i1", "a", 1), ("i2", "b", 0), ("i3", "c", 1)])
    one_item = agreement([("i1", "a", 1), ("i1", "b", 0)])
    one_value = agreement([(f"i{n}", r, 1) for n in range(5) for r in ("a", "b", "c")])

    assert (empty.items, empty.raters, empty.cohen_kappa, empty.fleiss_kappa, empty.krippendorff_alpha) == (
        0, 0, None, None, None)
    assert single_raters.items == 0 and single_raters.krippendorff_alpha is None
    assert one_item.items == 1 and one_item.cohen_kappa is None and one_item.fleiss_kappa is None
    # Everyone said "up" on everything: agreement is total but kappa and alpha are 0/0, so undefined.
    assert one_value.items == 5
    assert (one_value.cohen_kappa, one_value.fleiss_kappa, one_value.krippendorff_alpha) == (None, None, None)


def test_min_items_is_configurable() -> None:
    judgements = [(f"i{n}", r, n % 2) for n in range(3) for r in ("a", "b")]

    assert agreement(judgements).cohen_kappa is not None
    assert agreement(judgements, min_items=4).cohen_kappa is None


def test_a_later_judgement_by_the_same_rater_replaces_the_earlier() -> None:
    base = [(f"i{n}", r, n % 2) for n in range(4) for r in ("a", "b")]
    revised = [("i0", "b", 1), *base, ("i0", "b", 0)]

    assert agreement(revised) == agreement(base)


def test_ordinal_cohen_gives_partial_credit_for_near_misses() -> None:
    near = [("i1", "a", 0.0), ("i1", "b", 0.25), ("i2", "a", 0.5), ("i2", "b", 0.5), ("i3", "a", 1.0),
            ("i3", "b", 0.75), ("i4", "a", 0.25), ("i4", "b", 0.25)]

    ordinal = agreement(near)
    nominal = agreement(near, level="nominal")

    assert ordinal.level == "ordinal"
    assert ordinal.cohen_kappa is not None and nominal.cohen_kappa is not None
    assert ordinal.cohen_kappa.value > nominal.cohen_kappa.value
    assert ordinal.krippendorff_alpha is not None and nominal.krippendorff_alpha is not None
    assert ordinal.krippendorff_alpha.value > nominal.krippendorff_alpha.value


# ---- from feedback, grouped ----


def turn(iid: str, pos: int, app: str, model: str) -> InteractionRecord:
    return InteractionRecord(
        interaction_id=iid, event_id=f"e{pos}", position=pos, app_id=app, model_version=model, prompt_version="p",
        user_id_hash="author", consent_training=True, occurred_at=T0, messages=({"role": "user", "content": iid},),
        response="r", tags=())


def fb(kind: str, iid: str, pos: int, user: str, **payload: Any) -> FeedbackRecord:
    return FeedbackRecord(event_id=f"e{pos}", position=pos, type=kind, interaction_id=iid, user_id_hash=user,
                          consent_training=True, occurred_at=T0 + timedelta(seconds=pos), payload=payload)


def test_judgements_from_thumbs_and_ratings() -> None:
    interactions = [turn("i1", 1, "app-a", "m1")]
    feedback = [fb("thumbs", "i1", 2, "u1", value="up"), fb("thumbs", "i1", 3, "u2", value="down"),
                fb("rating", "i1", 4, "u1", score=4, scale=5), fb("rating", "i1", 5, "u2", score=7, scale=7,
                                                                 dimension="tone"),
                fb("thumbs", "unknown", 6, "u3", value="up")]

    thumbs = judgements_from(interactions, feedback, kind="thumbs")
    ratings = judgements_from(interactions, list(reversed(feedback)), kind="rating")

    assert thumbs == (Judgement("i1", "u1", 1.0, "app-a", "m1", "p"), Judgement("i1", "u2", 0.0, "app-a", "m1", "p"))
    assert [(j.item_id, j.value) for j in ratings] == [("i1", 0.75), ("i1#tone", 1.0)]


def test_agreement_per_app_and_per_model_version() -> None:
    interactions, feedback, pos = [], [], 0
    for app, model, agree in (("app-a", "m1", True), ("app-a", "m2", True), ("app-b", "m3", False)):
        for n in range(6):
            pos += 1
            iid = f"{model}-{n}"
            interactions.append(turn(iid, pos, app, model))
            value = "up" if n % 2 else "down"
            other = value if agree else ("down" if value == "up" else "up")
            feedback += [fb("thumbs", iid, pos * 10 + 1, "u1", value=value),
                         fb("thumbs", iid, pos * 10 + 2, "u2", value=other)]
    judgements = judgements_from(interactions, feedback, kind="thumbs")

    by_app = agreement_by(judgements, "app_id")
    by_model = agreement_by(judgements, "model_version")

    assert list(by_app) == ["app-a", "app-b"] and list(by_model) == ["m1", "m2", "m3"]
    assert by_app["app-a"].items == 12 and by_model["m1"].items == 6
    assert by_app["app-a"].cohen_kappa is not None and by_app["app-a"].cohen_kappa.band == "strong"
    assert by_model["m3"].cohen_kappa is not None and by_model["m3"].cohen_kappa.band == "poor"
    assert agreement_by(judgements, lambda j: j.app_id + "/" + j.prompt_version).keys() == {"app-a/p", "app-b/p"}


def test_grouped_ratings_stay_ordinal_even_when_a_group_holds_only_extremes() -> None:
    judgements = [Judgement("x", "a", 0.0, "app-a"), Judgement("x", "b", 1.0, "app-a"),
                  Judgement("y", "a", 0.5, "app-b"), Judgement("y", "b", 0.75, "app-b")]

    assert {k: a.level for k, a in agreement_by(judgements, "app_id").items()} == {
        "app-a": "ordinal", "app-b": "ordinal"}


# ---- bias audits ----


def pair(chosen: str, rejected: str, margin: float = 1.0, tie: bool = False) -> PreferencePair:
    return PreferencePair(
        pair_id="p", rule="comparison_pair", rule_version=1, prompt=(), chosen=chosen, rejected=rejected,
        chosen_interaction_id="a", rejected_interaction_id="b", margin=margin, tie=tie, status="accepted",
        decided_after=None, confidence=1.0, preference_reason="x", source_event_ids=(), app_id="a",
        model_version="m", prompt_version="p", chosen_model_version="m", chosen_prompt_version="p", tags=(),
        disagreement=False, consent=True, user_id_hash="u")


def test_length_bias_share_and_correlation() -> None:
    pairs = [pair("x" * 20, "x" * 10), pair("x" * 15, "x" * 10), pair("x" * 5, "x" * 10),
             pair("x" * 7, "x" * 4, margin=0.0, tie=True), pair("x" * 8, "y" * 8, margin=0.5)]

    result = length_bias(pairs)

    assert (result.pairs, result.chosen_longer, result.equal_length) == (4, 2, 1)
    assert result.chosen_longer_rate == 0.5
    # Both orientations of every pair: the means are 0, so r = sum(d * m) / sqrt(sum(d^2) * sum(m^2)).
    d, m = [10, 5, -5, 3, 0], [1.0, 1.0, 1.0, 0.0, 0.5]
    expected = sum(a * b for a, b in zip(d, m, strict=True)) / (sum(a * a for a in d) * sum(b * b for b in m)) ** 0.5
    assert result.correlation == pytest.approx(expected)


def test_length_bias_is_undefined_without_pairs_or_length_differences() -> None:
    assert length_bias([]).chosen_longer_rate is None and length_bias([]).correlation is None
    same = length_bias([pair("abc", "xyz"), pair("ab", "xy")])
    assert same.chosen_longer_rate == 0.0 and same.correlation is None
    only_ties = length_bias([pair("abcdef", "x", margin=0.0, tie=True)])
    assert only_ties.pairs == 0 and only_ties.chosen_longer_rate is None and only_ties.correlation is None


def comparison(pos: int, chosen: str, rejected: str, first: str, strength: str = "much") -> FeedbackRecord:
    return fb("comparison", first, pos, "u1", chosen_interaction_id=chosen, rejected_interaction_id=rejected,
              presented_order=[first, rejected if first == chosen else chosen], strength=strength)


def test_position_bias_counts_first_shown_wins_over_non_ties() -> None:
    records = [comparison(n, "a", "b", first="a") for n in range(9)] + [
        comparison(9, "a", "b", first="b"), comparison(10, "a", "b", first="b", strength="tie"),
        fb("thumbs", "a", 11, "u1", value="up")]

    result = position_bias(records)

    assert (result.comparisons, result.ties, result.first_shown_wins) == (10, 1, 9)
    assert result.first_shown_win_rate == 0.9
    assert result.p_value == pytest.approx(22 / 1024)  # P(>= 9 of 10) * 2 under a fair coin
    assert position_bias(records[:1] + records[:1]).comparisons == 1  # a repeated row counts once


def test_position_bias_of_nothing() -> None:
    result = position_bias([comparison(1, "a", "b", first="a", strength="tie")])

    assert (result.comparisons, result.ties, result.first_shown_win_rate, result.p_value) == (0, 1, None, None)


# ---- simulated rater panels ----


@cache
def panel_stream() -> tuple[tuple[InteractionRecord, ...], tuple[FeedbackRecord, ...]]:
    interactions, feedback = [], []
    for pos, sim in enumerate(generate(6000, seed=31, panel_fraction=0.05), start=1):
        event = sim.event
        if isinstance(event, Interaction):
            interactions.append(InteractionRecord.from_event(event, pos))
        elif event is not None:
            feedback.append(FeedbackRecord.from_event(event, pos))
    return tuple(interactions), tuple(feedback)


def test_panels_are_other_users_of_the_same_app_judging_one_interaction() -> None:
    interactions, feedback = panel_stream()
    by_id = {i.interaction_id: i for i in interactions}
    personas: dict[str, set[str]] = {app.app_id: set() for app in APPS}
    for i in interactions:
        personas[i.app_id].add(i.user_id_hash)
    others = [f for f in feedback if f.type in ("thumbs", "rating")
              and f.user_id_hash != by_id[f.interaction_id].user_id_hash]
    panels: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for f in others:
        panels[f.interaction_id].append(f)

    assert 0.02 < len(panels) / len(interactions) < 0.09
    for iid, judges in panels.items():
        assert 2 <= len(judges) <= 4 and len({f.user_id_hash for f in judges}) == len(judges)
        assert len({f.type for f in judges}) == 1  # one kind of judgement per panel
        assert {f.user_id_hash for f in judges} <= personas[by_id[iid].app_id]
        if judges[0].type == "rating":
            assert len({f.payload.get("dimension") for f in judges}) == 1
    assert any(len({f.payload.get("value") for f in js}) == 2 for js in panels.values())  # they disagree


def test_panels_are_seeded_and_keep_the_stream_contract() -> None:
    first = list(generate(997, seed=3, bad_fraction=0.05, panel_fraction=0.2))
    again = list(generate(997, seed=3, bad_fraction=0.05, panel_fraction=0.2))
    plain = list(generate(997, seed=3, bad_fraction=0.05))

    assert [s.value for s in first] == [s.value for s in again] != [s.value for s in plain]
    assert len(first) == 997 and abs(sum(s.expected_reason is not None for s in first) - 997 * 0.05) <= 1
    assert plain == list(generate(997, seed=3, bad_fraction=0.05, panel_fraction=0.0))
    served = {orjson.loads(s.value)["interaction_id"] for s in first if s.event_type == "interaction"}
    assert all(orjson.loads(s.value)["interaction_id"] in served for s in first
               if s.event_type in ("thumbs", "rating") and s.expected_reason is None)
    with pytest.raises(ValueError):
        list(generate(10, seed=1, panel_fraction=1.5))


def test_simulated_panels_make_agreement_computable_per_app() -> None:
    interactions, feedback = panel_stream()
    thumbs = judgements_from(interactions, feedback, kind="thumbs")
    ratings = judgements_from(interactions, feedback, kind="rating")

    overall = agreement(thumbs)
    assert overall.items >= 30 and overall.level == "nominal"
    assert overall.fleiss_kappa is not None and overall.krippendorff_alpha is not None
    # Raters follow the response's quality with noise: they agree more than chance, far from perfectly.
    assert 0.1 < overall.fleiss_kappa.value < 0.9
    assert agreement(ratings).level == "ordinal"
    by_app = agreement_by(thumbs, "app_id")
    assert set(by_app) == {app.app_id for app in APPS}
    assert all(a.items > 0 for a in by_app.values())


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 57, 400, 5001])
def test_the_fair_coin_p_value_is_scipys_binomtest(n: int) -> None:
    from scipy.stats import binomtest

    for k in sorted({0, 1, n // 3, n // 2, (n + 1) // 2, n - 1, n}):
        if 0 <= k <= n:
            assert fair_coin_p_value(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9, abs=1e-300)
