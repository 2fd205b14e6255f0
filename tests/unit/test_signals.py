"""Signal rules: each rule on hand-written groups, then determinism over shuffled simulated and random groups."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.domain.signals import (
    COMPARISON_PAIR,
    EDIT_PAIR,
    EDIT_SFT,
    RATING_LABEL,
    RATING_PAIR,
    REGENERATE_PAIR,
    RULES,
    THUMBS_LABEL,
    FeedbackRecord,
    InteractionRecord,
    PromptGroup,
    Record,
    SignalConfig,
    Signals,
    Unit,
    derive,
    derive_units,
    edit_distance,
    prompt_key,
    signals,
)
from flywheel.domain.wire import Interaction
from flywheel.simulator import generate

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PROMPT: tuple[dict[str, Any], ...] = ({"role": "user", "content": "How do I reset my password?"},)
ORIGINAL = "Try again later, the email system is sometimes slow."
BETTER = ("Reset emails come from our no-reply address, so please check your spam folder first. I've just "
          "sent a fresh link that stays valid for 30 minutes.")
CONFIG = SignalConfig()


def turn(iid: str, pos: int, *, at: float = 0.0, response: str = ORIGINAL,
         messages: tuple[dict[str, Any], ...] = PROMPT, user: str = "u1", consent: bool = True,
         model: str = "m-1", tags: tuple[str, ...] = ("factuality",)) -> InteractionRecord:
    return InteractionRecord(
        interaction_id=iid, event_id=f"e{pos}", position=pos, app_id="support-bot", model_version=model,
        prompt_version="p-1", user_id_hash=user, consent_training=consent,
        occurred_at=T0 + timedelta(seconds=at), messages=messages, response=response, tags=tags)


def fb(kind: str, iid: str, pos: int, *, at: float = 0.0, user: str = "u1", consent: bool = True,
       **payload: Any) -> FeedbackRecord:
    return FeedbackRecord(event_id=f"e{pos}", position=pos, type=kind, interaction_id=iid, user_id_hash=user,
                          consent_training=consent, occurred_at=T0 + timedelta(seconds=at), payload=payload)


def thumbs(iid: str, pos: int, value: str = "up", **kw: Any) -> FeedbackRecord:
    return fb("thumbs", iid, pos, value=value, **kw)


def edit(iid: str, pos: int, edited: str, **kw: Any) -> FeedbackRecord:
    return fb("edit", iid, pos, edited_response=edited, **kw)


def regenerate(iid: str, pos: int, new: str, **kw: Any) -> FeedbackRecord:
    return fb("regenerate", iid, pos, new_interaction_id=new, **kw)


def rating(iid: str, pos: int, score: int, scale: int = 5, dimension: str | None = None, **kw: Any) -> FeedbackRecord:
    payload: dict[str, Any] = {"score": score, "scale": scale}
    if dimension is not None:
        payload["dimension"] = dimension
    return fb("rating", iid, pos, **payload, **kw)


def compare(chosen: str, rejected: str, pos: int, strength: str = "much", first: str | None = None,
            **kw: Any) -> FeedbackRecord:
    first = first or chosen
    order = [first, rejected if first == chosen else chosen]
    return fb("comparison", first, pos, chosen_interaction_id=chosen, rejected_interaction_id=rejected,
              presented_order=order, strength=strength, **kw)


def run(*records: InteractionRecord | FeedbackRecord, config: SignalConfig = CONFIG) -> Signals:
    return derive([r for r in records if isinstance(r, InteractionRecord)],
                  [r for r in records if isinstance(r, FeedbackRecord)], config)


# ---- edit ----


@pytest.mark.parametrize("edited", [
    ORIGINAL + " ",
    "  try again later,   the EMAIL system is sometimes slow.",
    ORIGINAL[:-1],  # a dropped full stop
    ORIGINAL.replace("the email", "our email"),  # a word swapped: 3 of 52 characters
])
def test_a_trivial_edit_gives_no_pair_and_no_sample(edited: str) -> None:
    out = run(turn("i1", 1), edit("i1", 2, edited))

    assert edit_distance(ORIGINAL, edited) < CONFIG.edit_min_distance
    assert out == Signals()


def test_a_substantive_edit_gives_a_pair_and_an_sft_sample() -> None:
    out = run(turn("i1", 1), edit("i1", 2, BETTER, at=30))

    (pair,) = out.pairs
    assert (pair.rule, pair.rule_version, pair.preference_reason) == (EDIT_PAIR, RULES[EDIT_PAIR],
                                                                        "edited_substantively")
    assert (pair.prompt, pair.chosen, pair.rejected) == (PROMPT, BETTER, ORIGINAL)
    assert (pair.chosen_interaction_id, pair.rejected_interaction_id) == (None, "i1")
    assert (pair.status, pair.decided_after, pair.tie, pair.disagreement, pair.consent) == (
        "accepted", None, False, False, True)
    assert (pair.margin, pair.confidence) == (CONFIG.margin_edit, CONFIG.confidence_edit)
    assert pair.source_event_ids == ("e1", "e2")
    assert (pair.app_id, pair.model_version, pair.prompt_version, pair.tags) == (
        "support-bot", "m-1", "p-1", ("factuality",))
    (sample,) = out.sft_samples
    assert sample.messages == (*PROMPT, {"role": "assistant", "content": BETTER})
    assert (sample.rule, sample.interaction_id, sample.source_event_ids) == (EDIT_SFT, "i1", ("e1", "e2"))
    assert sample.sample_id != pair.pair_id
    assert [(h.interaction_id, h.reason) for h in out.hard_cases] == [("i1", "edited")]
    assert out.kto_labels == () and out.disagreements == ()


def test_the_edit_threshold_is_configurable() -> None:
    appended = ORIGINAL + " Check spam."  # about 0.2 of the length added
    strict = SignalConfig(edit_min_distance=0.5)

    assert len(run(turn("i1", 1), edit("i1", 2, appended)).pairs) == 1
    assert run(turn("i1", 1), edit("i1", 2, appended), config=strict) == Signals()


# ---- regenerate ----


def test_regenerate_then_thumbs_up_is_an_accepted_pair() -> None:
    out = run(turn("old", 1), regenerate("old", 2, "new", at=5), turn("new", 3, at=6, response=BETTER, model="m-2"),
              thumbs("new", 4, at=40))

    (pair,) = out.pairs
    assert (pair.rule, pair.preference_reason, pair.status, pair.decided_after) == (
        REGENERATE_PAIR, "regenerated_then_accepted", "accepted", None)
    assert (pair.chosen, pair.rejected, pair.chosen_interaction_id, pair.rejected_interaction_id) == (
        BETTER, ORIGINAL, "new", "old")
    assert (pair.model_version, pair.chosen_model_version) == ("m-1", "m-2")
    assert pair.source_event_ids == ("e1", "e2", "e3", "e4")
    assert pair.confidence == CONFIG.confidence_regenerate_accepted < CONFIG.confidence_edit
    assert [(h.interaction_id, h.reason) for h in out.hard_cases] == [("old", "regenerated")]


def test_regenerate_without_a_verdict_is_pending_until_the_window_closes() -> None:
    out = run(turn("old", 1), regenerate("old", 2, "new", at=5), turn("new", 3, at=6, response=BETTER))

    (pair,) = out.pairs
    assert (pair.status, pair.preference_reason) == ("pending", "regenerated_then_silent")
    assert pair.decided_after == T0 + timedelta(seconds=6 + CONFIG.regenerate_window_seconds)
    assert pair.confidence == CONFIG.confidence_regenerate_silent < CONFIG.confidence_regenerate_accepted
    assert pair.source_event_ids == ("e1", "e2", "e3")

    short = run(turn("old", 1), regenerate("old", 2, "new", at=5), turn("new", 3, at=6, response=BETTER),
                config=SignalConfig(regenerate_window_seconds=60))
    assert short.pairs[0].decided_after == T0 + timedelta(seconds=66)


def test_regenerate_then_thumbs_down_gives_no_pair_and_a_hard_case() -> None:
    out = run(turn("old", 1), regenerate("old", 2, "new", at=5), turn("new", 3, at=6, response=BETTER),
              thumbs("new", 4, "down", at=20))

    assert out.pairs == ()
    assert {(h.interaction_id, h.reason) for h in out.hard_cases} == {("old", "regenerated"), ("new", "thumbs_down")}
    assert [(k.interaction_id, k.desirable) for k in out.kto_labels] == [("new", False)]


def test_regenerate_then_a_low_rating_in_the_window_gives_no_pair() -> None:
    out = run(turn("old", 1), regenerate("old", 2, "new", at=5), turn("new", 3, at=6, response=BETTER),
              rating("new", 4, 1, at=100))

    assert out.pairs == ()
    assert ("new", "low_rating") in {(h.interaction_id, h.reason) for h in out.hard_cases}


def test_regenerate_then_regenerate_pairs_only_the_last_step() -> None:
    third = BETTER + " Anything else?"
    out = run(turn("a", 1), regenerate("a", 2, "b", at=5), turn("b", 3, at=6, response="Wait."),
              regenerate("b", 4, "c", at=30), turn("c", 5, at=31, response=third))

    (pair,) = out.pairs
    assert (pair.rejected_interaction_id, pair.chosen_interaction_id, pair.status) == ("b", "c", "pending")
    assert pair.source_event_ids == ("e3", "e4", "e5")
    assert {(h.interaction_id, h.reason) for h in out.hard_cases} == {("a", "regenerated"), ("b", "regenerated")}


def test_an_objection_after_the_window_does_not_undo_the_regenerate_pair() -> None:
    late = CONFIG.regenerate_window_seconds + 7
    out = run(turn("old", 1), regenerate("old", 2, "new", at=5), turn("new", 3, at=6, response=BETTER),
              thumbs("new", 4, "down", at=6 + late))

    (pair,) = out.pairs
    assert (pair.status, pair.chosen_interaction_id) == ("pending", "new")
    assert pair.decided_after is not None and pair.decided_after < T0 + timedelta(seconds=6 + late)


def test_regenerate_waits_for_the_new_interaction() -> None:
    out = run(turn("old", 1), regenerate("old", 2, "new", at=5))

    assert out.pairs == ()
    assert [(h.interaction_id, h.reason) for h in out.hard_cases] == [("old", "regenerated")]


def test_regenerate_to_a_different_prompt_gives_no_pair() -> None:
    other = ({"role": "user", "content": "Something else entirely"},)
    out = run(turn("old", 1), regenerate("old", 2, "new"), turn("new", 3, messages=other, response=BETTER))

    assert out.pairs == ()


# ---- comparison ----


def test_a_comparison_tie_is_kept_as_a_tie_with_margin_zero() -> None:
    out = run(turn("a", 1, response=ORIGINAL, model="m-1"), turn("b", 2, response=BETTER, model="m-2"),
              compare("a", "b", 3, "tie"))

    (pair,) = out.pairs
    assert (pair.rule, pair.tie, pair.margin, pair.preference_reason) == (
        COMPARISON_PAIR, True, 0.0, "explicit_comparison_tie")
    assert (pair.chosen_interaction_id, pair.rejected_interaction_id) == ("a", "b")
    assert pair.confidence == CONFIG.confidence_comparison_tie
    assert out.disagreements == () and out.hard_cases == ()


def test_comparison_strength_sets_margin_and_confidence() -> None:
    base = (turn("a", 1, response=BETTER, model="m-2"), turn("b", 2, response=ORIGINAL, model="m-1"))
    much = run(*base, compare("a", "b", 3, "much")).pairs[0]
    slightly = run(*base, compare("a", "b", 3, "slightly")).pairs[0]

    assert (much.margin, much.preference_reason, much.tie) == (1.0, "explicit_comparison_much", False)
    assert (slightly.margin, slightly.preference_reason) == (0.5, "explicit_comparison_slightly")
    assert much.confidence > slightly.confidence
    assert (much.chosen, much.rejected, much.chosen_model_version, much.model_version) == (
        BETTER, ORIGINAL, "m-2", "m-1")
    custom = run(*base, compare("a", "b", 3, "slightly"), config=SignalConfig(margin_slightly=0.25)).pairs[0]
    assert custom.margin == 0.25


def test_opposite_comparisons_of_one_pair_are_a_disagreement() -> None:
    out = run(turn("a", 1, response=BETTER), turn("b", 2),
              compare("a", "b", 3, "much", user="u1"), compare("b", "a", 4, "slightly", user="u2"))

    assert len(out.pairs) == 2 and all(p.disagreement for p in out.pairs)
    (d,) = out.disagreements
    assert (d.interaction_id, d.other_interaction_id, d.user_count) == ("a", "b", 2)
    assert d.source_event_ids == ("e3", "e4")
    assert {(h.interaction_id, h.reason) for h in out.hard_cases} == {("a", "disagreement"), ("b", "disagreement")}


# ---- rating ----


def test_ratings_far_enough_apart_make_a_pair() -> None:
    out = run(turn("a", 1, response=BETTER), turn("b", 2), rating("a", 3, 5), rating("b", 4, 2))

    (pair,) = out.pairs
    assert (pair.rule, pair.preference_reason, pair.chosen_interaction_id, pair.rejected_interaction_id) == (
        RATING_PAIR, "rating_gap", "a", "b")
    assert pair.margin == 0.75  # (5 - 2) / 4 on the normalised scale
    assert pair.source_event_ids == ("e1", "e2", "e3", "e4")
    assert [(k.interaction_id, k.desirable, k.rule) for k in out.kto_labels] == [
        ("a", True, RATING_LABEL), ("b", False, RATING_LABEL)]
    assert [(h.interaction_id, h.reason) for h in out.hard_cases] == [("b", "low_rating")]


def test_ratings_under_the_gap_or_from_different_users_make_no_pair() -> None:
    close = run(turn("a", 1, response=BETTER), turn("b", 2), rating("a", 3, 4), rating("b", 4, 3))
    two_users = run(turn("a", 1, response=BETTER), turn("b", 2), rating("a", 3, 5, user="u1"),
                    rating("b", 4, 1, user="u2"))
    other_dimension = run(turn("a", 1, response=BETTER), turn("b", 2), rating("a", 3, 5, dimension="tone"),
                          rating("b", 4, 1, dimension="correctness"))

    assert close.pairs == two_users.pairs == other_dimension.pairs == ()
    assert [k.desirable for k in close.kto_labels] == [True]  # 3 of 5 is neither
    assert len(two_users.kto_labels) == 2


def test_a_rating_is_compared_with_the_raters_latest_ratings_before_it() -> None:
    # One rater alternates 5 and 1 over six responses: with a window of 2, each rating meets the two before it.
    records: list[InteractionRecord | FeedbackRecord] = []
    for n in range(6):
        records += [turn(f"i{n}", 2 * n + 1, response=f"answer {n}"), rating(f"i{n}", 2 * n + 2, 5 if n % 2 else 1)]
    out = run(*records, config=SignalConfig(rating_pair_window=2))

    assert sorted((p.chosen_interaction_id, p.rejected_interaction_id) for p in out.pairs) == [
        ("i1", "i0"), ("i1", "i2"), ("i3", "i2"), ("i3", "i4"), ("i5", "i4")]
    assert len(run(*records).pairs) == 9  # the default window (8) reaches every earlier rating here
    with pytest.raises(ValueError, match="rating_pair_window"):
        SignalConfig(rating_pair_window=0)


def test_ratings_on_other_scales_are_normalised() -> None:
    out = run(turn("a", 1, response=BETTER), turn("b", 2), rating("a", 3, 9, scale=10, dimension="clarity"),
              rating("b", 4, 3, scale=10, dimension="clarity"))

    (pair,) = out.pairs
    assert pair.margin == pytest.approx(6 / 9) and pair.dimension == "clarity"
    assert [(k.desirable, k.dimension) for k in out.kto_labels] == [(True, "clarity"), (False, "clarity")]
    assert len(run(turn("a", 1), rating("a", 2, 1, scale=1)).kto_labels) == 0  # a one-point scale says nothing


# ---- thumbs and disagreement ----


def test_thumbs_give_kto_labels_and_a_thumbs_down_a_hard_case() -> None:
    out = run(turn("i1", 1), thumbs("i1", 2, "down", user="u7", consent=False))

    (label,) = out.kto_labels
    assert (label.rule, label.desirable, label.preference_reason, label.user_id_hash) == (
        THUMBS_LABEL, False, "thumbs_down", "u7")
    assert (label.prompt, label.completion, label.source_event_ids) == (PROMPT, ORIGINAL, ("e1", "e2"))
    assert label.consent is False  # the judging user opted out, even though the author did not
    assert [(h.interaction_id, h.reason, h.source_event_ids) for h in out.hard_cases] == [
        ("i1", "thumbs_down", ("e2",))]


def test_conflicting_thumbs_from_two_users_are_both_kept_and_marked() -> None:
    out = run(turn("i1", 1), thumbs("i1", 2, "up", user="u1"), thumbs("i1", 3, "down", user="u2"))

    assert [(k.desirable, k.disagreement, k.user_id_hash) for k in out.kto_labels] == [
        (True, True, "u1"), (False, True, "u2")]
    (d,) = out.disagreements
    assert (d.interaction_id, d.kinds, d.user_count, d.source_event_ids) == (
        "i1", ("thumbs_down", "thumbs_up"), 2, ("e2", "e3"))
    assert {h.reason for h in out.hard_cases} == {"thumbs_down", "disagreement"}


def test_thumbs_up_and_a_substantive_edit_are_a_disagreement() -> None:
    out = run(turn("i1", 1), thumbs("i1", 2, "up"), edit("i1", 3, BETTER))

    (d,) = out.disagreements
    assert (d.kinds, d.user_count) == (("edit", "thumbs_up"), 1)
    assert out.pairs[0].disagreement and out.sft_samples[0].disagreement and out.kto_labels[0].disagreement
    assert len(out.pairs) == len(out.sft_samples) == len(out.kto_labels) == 1  # nothing dropped


def test_a_low_rating_on_another_dimension_is_no_disagreement() -> None:
    out = run(turn("i1", 1), thumbs("i1", 2, "up"), rating("i1", 3, 1, dimension="tone"))

    assert out.disagreements == ()
    assert not any(k.disagreement for k in out.kto_labels)
    overall = run(turn("i1", 1), thumbs("i1", 2, "up"), rating("i1", 3, 1))
    assert overall.disagreements[0].kinds == ("rating_low", "thumbs_up")


# ---- the group as a set ----


def test_feedback_before_its_interaction_in_the_input_changes_nothing() -> None:
    records = [turn("old", 1), regenerate("old", 2, "new", at=5), turn("new", 3, at=6, response=BETTER),
               thumbs("new", 4, at=9), edit("old", 5, BETTER + " Sorry!"), thumbs("old", 6, "down", user="u2")]
    forward = derive([r for r in records if isinstance(r, InteractionRecord)],
                     [r for r in records if isinstance(r, FeedbackRecord)], CONFIG)
    backward = derive(list(reversed([r for r in records if isinstance(r, InteractionRecord)])),
                      list(reversed([r for r in records if isinstance(r, FeedbackRecord)])), CONFIG)

    assert forward == backward
    assert len(forward.pairs) == 2 and len(forward.kto_labels) == 2


def test_feedback_stored_before_its_interaction_is_still_judged() -> None:
    out = run(thumbs("i1", 1, "down"), turn("i1", 2), regenerate("i1", 3, "i2", at=5),
              turn("i2", 7, at=6, response=BETTER), thumbs("i2", 4, "up", at=8))

    assert [(k.interaction_id, k.source_event_ids) for k in out.kto_labels] == [
        ("i1", ("e1", "e2")), ("i2", ("e4", "e7"))]
    (pair,) = out.pairs
    assert (pair.status, pair.source_event_ids) == ("accepted", ("e2", "e3", "e4", "e7"))


def test_repeated_rows_and_foreign_feedback_are_ignored() -> None:
    base: list[InteractionRecord | FeedbackRecord] = [turn("i1", 1), thumbs("i1", 2)]

    assert run(*base, *base) == run(*base)
    assert run(*base, thumbs("elsewhere", 3, "down"), compare("i1", "elsewhere", 4)) == run(*base)


def test_multi_turn_prompt_is_the_conversation_up_to_the_judged_turn() -> None:
    conversation = (
        {"role": "system", "content": "You are the support assistant."},
        {"role": "user", "content": "I was charged twice."},
        {"role": "assistant", "content": "I've refunded the second charge."},
        {"role": "user", "content": "Thanks. And how do I reset my password?"},
    )
    out = run(turn("i2", 1, messages=conversation), edit("i2", 2, BETTER), thumbs("i2", 3, "down"))

    assert out.pairs[0].prompt == conversation and out.kto_labels[0].prompt == conversation
    assert out.sft_samples[0].messages == (*conversation, {"role": "assistant", "content": BETTER})
    assert ORIGINAL not in str(out.pairs[0].prompt)


def test_consent_is_false_when_the_interaction_or_a_judge_opted_out() -> None:
    author_out = run(turn("i1", 1, consent=False), edit("i1", 2, BETTER))
    judge_out = run(turn("i1", 1), edit("i1", 2, BETTER, consent=False))
    both_in = run(turn("i1", 1), edit("i1", 2, BETTER))

    assert not author_out.pairs[0].consent and not author_out.sft_samples[0].consent
    assert not judge_out.pairs[0].consent and not judge_out.hard_cases[0].consent
    assert both_in.pairs[0].consent and both_in.sft_samples[0].consent


def test_ids_depend_on_rule_and_sources_only() -> None:
    one = run(turn("i1", 1), edit("i1", 2, BETTER), thumbs("i1", 3, "down"))
    again = run(turn("i1", 1), edit("i1", 2, BETTER), thumbs("i1", 3, "down"))
    other = run(turn("i1", 1), edit("i1", 2, BETTER), thumbs("i1", 4, "down"))

    assert one == again
    assert one.pairs[0].pair_id == other.pairs[0].pair_id  # same edit: same pair
    assert one.kto_labels[0].label_id != other.kto_labels[0].label_id  # another thumbs event
    ids = [one.pairs[0].pair_id, one.sft_samples[0].sample_id, one.kto_labels[0].label_id,
           *(h.case_id for h in one.hard_cases)]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)


def test_prompt_key_ignores_key_order_and_nulls_but_not_text() -> None:
    a = [{"role": "user", "content": "hi"}]
    b = [{"content": "hi", "role": "user", "name": None}]

    assert prompt_key(a) == prompt_key(b) == prompt_key(tuple(b))
    assert prompt_key(a) != prompt_key([{"role": "user", "content": "hi "}])
    assert prompt_key(a) != prompt_key([*a, {"role": "assistant", "content": "x"}])


def test_config_version_is_a_stable_hash_of_its_values() -> None:
    assert SignalConfig().version() == SignalConfig(regenerate_window_seconds=600.0).version()
    assert SignalConfig().version() != SignalConfig(edit_min_distance=0.2).version()
    assert len(SignalConfig().version()) == 12
    with pytest.raises(ValueError):
        SignalConfig(edit_min_distance=1.5)
    with pytest.raises(ValueError):
        SignalConfig(rating_desirable_min=2, rating_undesirable_max=3)
    with pytest.raises(ValueError):
        SignalConfig(regenerate_window_seconds=-1)


# ---- properties ----


@cache
def simulated_groups() -> tuple[tuple[tuple[InteractionRecord, ...], tuple[FeedbackRecord, ...]], ...]:
    interactions: list[InteractionRecord] = []
    feedback: list[FeedbackRecord] = []
    for pos, sim in enumerate(generate(2500, seed=11, panel_fraction=0.08), start=1):
        event = sim.event
        if isinstance(event, Interaction):
            interactions.append(InteractionRecord.from_event(event, pos))
        elif event is not None:
            feedback.append(FeedbackRecord.from_event(event, pos))
    key = {i.interaction_id: prompt_key(i.messages) for i in interactions}
    groups: dict[str, tuple[list[InteractionRecord], list[FeedbackRecord]]] = defaultdict(lambda: ([], []))
    for i in interactions:
        groups[key[i.interaction_id]][0].append(i)
    for f in feedback:
        groups[key[f.interaction_id]][1].append(f)
    # Groups with feedback; the busiest first so that every rule is exercised.
    rich = sorted((g for g in groups.values() if g[1]), key=lambda g: (-len(g[0]) - len(g[1]), g[0][0].position))
    return tuple((tuple(i), tuple(f)) for i, f in rich)


def test_simulated_groups_exercise_every_rule() -> None:
    out = [derive(i, f, CONFIG) for i, f in simulated_groups()]
    rules = {p.rule for s in out for p in s.pairs} | {k.rule for s in out for k in s.kto_labels} | {
        x.rule for s in out for x in s.sft_samples}

    assert rules == set(RULES)
    assert any(s.disagreements for s in out) and any(p.status == "pending" for s in out for p in s.pairs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=10_000), st.randoms(use_true_random=False))
def test_derive_ignores_input_order_on_simulated_groups(pick: int, rnd: random.Random) -> None:
    groups = simulated_groups()
    interactions, feedback = groups[pick % min(len(groups), 80)]
    shuffled_i, shuffled_f = list(interactions), list(feedback)
    rnd.shuffle(shuffled_i)
    rnd.shuffle(shuffled_f)

    expected = derive(interactions, feedback, CONFIG)
    assert derive(shuffled_i, shuffled_f, CONFIG) == expected
    assert derive(shuffled_i + shuffled_i[:1], shuffled_f + shuffled_f[:2], CONFIG) == expected
    ids = [p.pair_id for p in expected.pairs] + [k.label_id for k in expected.kto_labels]
    assert len(ids) == len(set(ids))


RESPONSES = (ORIGINAL, BETTER, ORIGINAL.upper(), BETTER + " Done.", "Wait.")


@st.composite
def random_groups(draw: st.DrawFn) -> tuple[list[InteractionRecord], list[FeedbackRecord]]:
    """Small groups mixing every feedback type, with regenerations to missing interactions and clashes."""
    n = draw(st.integers(1, 4))
    ids = [f"i{k}" for k in range(n)]
    positions = iter(draw(st.lists(st.integers(1, 10_000), min_size=n + 12, max_size=n + 12, unique=True)))
    users = st.sampled_from(["u1", "u2", "u3"])
    interactions = [turn(iid, next(positions), at=draw(st.floats(0, 2000)), response=draw(st.sampled_from(RESPONSES)),
                         user=draw(users), consent=draw(st.booleans())) for iid in ids]
    feedback = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["thumbs", "edit", "regenerate", "rating", "comparison"]))
        iid, pos = draw(st.sampled_from(ids)), next(positions)
        common: dict[str, Any] = {"at": draw(st.floats(0, 3000)), "user": draw(users), "consent": draw(st.booleans())}
        if kind == "thumbs":
            feedback.append(thumbs(iid, pos, draw(st.sampled_from(["up", "down"])), **common))
        elif kind == "edit":
            feedback.append(edit(iid, pos, draw(st.sampled_from(RESPONSES)), **common))
        elif kind == "regenerate":
            feedback.append(regenerate(iid, pos, draw(st.sampled_from([*ids, "missing"])), **common))
        elif kind == "rating":
            feedback.append(rating(iid, pos, draw(st.integers(1, 5)),
                                   dimension=draw(st.sampled_from([None, "tone"])), **common))
        elif n >= 2:
            other = draw(st.sampled_from([i for i in ids if i != iid]))
            feedback.append(compare(iid, other, pos, draw(st.sampled_from(["much", "slightly", "tie"])),
                                    first=draw(st.sampled_from([iid, other])), **common))
    return interactions, feedback


@settings(max_examples=150, deadline=None)
@given(random_groups(), st.randoms(use_true_random=False))
def test_derive_ignores_input_order_on_random_groups(
        group: tuple[list[InteractionRecord], list[FeedbackRecord]], rnd: random.Random) -> None:
    interactions, feedback = group
    shuffled_i, shuffled_f = list(interactions), list(feedback)
    rnd.shuffle(shuffled_i)
    rnd.shuffle(shuffled_f)

    expected = derive(interactions, feedback, CONFIG)
    assert derive(shuffled_i, shuffled_f, CONFIG) == expected

    ids = [p.pair_id for p in expected.pairs] + [k.label_id for k in expected.kto_labels] + [
        s.sample_id for s in expected.sft_samples] + [h.case_id for h in expected.hard_cases]
    assert len(ids) == len(set(ids))
    known = {i.event_id for i in interactions} | {f.event_id for f in feedback}
    disputed = {d.interaction_id for d in expected.disagreements} | {
        d.other_interaction_id for d in expected.disagreements if d.other_interaction_id}
    for pair in expected.pairs:
        assert set(pair.source_event_ids) <= known
        assert list(pair.source_event_ids) == sorted(pair.source_event_ids, key=lambda e: int(e[1:]))
        involved = {pair.rejected_interaction_id} | ({pair.chosen_interaction_id} - {None})
        assert pair.disagreement == bool(involved & disputed)
        assert pair.status == "accepted" or pair.rule == REGENERATE_PAIR
    for label in expected.kto_labels:
        assert label.disagreement == (label.interaction_id in disputed)


def grown(interactions: list[InteractionRecord], feedback: list[FeedbackRecord], config: SignalConfig,
          cuts: list[int], order: list[int]) -> Signals:
    """The group fed to PromptGroup.add in batches (events in `order`, cut at `cuts`), each change's units
    re-derived and replacing their earlier records, as the signals projector does."""
    events: list[InteractionRecord | FeedbackRecord] = [*interactions, *feedback]
    events = [events[k] for k in order]
    g = PromptGroup([], [], config)
    units: dict[Unit, list[Record]] = {}
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        batch = events[start:end]
        change = g.add([e for e in batch if isinstance(e, InteractionRecord)],
                       [e for e in batch if isinstance(e, FeedbackRecord)])
        units.update(derive_units(g, change))
    return signals(g, [r for records in units.values() for r in records])


def test_a_dispute_that_arrives_later_marks_the_rating_pairs_of_later_ratings() -> None:
    # The pair of two ratings belongs to the later one; a dispute about the earlier one's response must reach it.
    first = [turn("a", 1, response=BETTER), turn("b", 2), rating("a", 3, 5), rating("b", 4, 1)]
    then = [thumbs("a", 5, "up", user="u2"), thumbs("a", 6, "down", user="u3")]
    whole = derive([r for r in first if isinstance(r, InteractionRecord)],
                   [r for r in [*first, *then] if isinstance(r, FeedbackRecord)], CONFIG)

    assert [p.disagreement for p in whole.pairs] == [True]
    assert grown(first[:2], [*first[2:], *then], CONFIG, [4], list(range(6))) == whole


@settings(max_examples=150, deadline=None)
@given(random_groups(), st.data())
def test_a_group_grown_in_log_order_derives_what_the_whole_group_does(
        group: tuple[list[InteractionRecord], list[FeedbackRecord]], data: st.DataObject) -> None:
    interactions, feedback = group
    config = SignalConfig(rating_pair_window=data.draw(st.integers(1, 3)))
    events = [*interactions, *feedback]
    order = sorted(range(len(events)), key=lambda k: events[k].position)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=6)))

    assert grown(interactions, feedback, config, cuts, order) == derive(interactions, feedback, config)


@settings(max_examples=150, deadline=None)
@given(random_groups(), st.data())
def test_a_group_grown_in_any_order_derives_what_the_whole_group_does(
        group: tuple[list[InteractionRecord], list[FeedbackRecord]], data: st.DataObject) -> None:
    interactions, feedback = group
    config = SignalConfig(rating_pair_window=data.draw(st.integers(1, 3)))
    order = data.draw(st.permutations(range(len(interactions) + len(feedback))))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=6)))

    assert grown(interactions, feedback, config, cuts, list(order)) == derive(interactions, feedback, config)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=10_000), st.integers(1, 40))
def test_simulated_groups_grown_a_step_at_a_time_derive_the_same(pick: int, step: int) -> None:
    groups = simulated_groups()
    interactions, feedback = groups[pick % min(len(groups), 40)]
    events = [*interactions, *feedback]
    order = sorted(range(len(events)), key=lambda k: events[k].position)
    config = SignalConfig(rating_pair_window=2)

    assert grown(list(interactions), list(feedback), config, list(range(step, len(events), step)), order) == derive(
        interactions, feedback, config)
