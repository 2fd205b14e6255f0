"""The traffic simulator: reproducible, honest about what each message must become, and causally ordered."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from flywheel.domain.redact import Redactor
from flywheel.domain.validation import OVERSIZE, REASONS, UNKNOWN_INTERACTION, InvalidEvent, decode, parse
from flywheel.domain.wire import (
    FEEDBACK_TYPES,
    Comparison,
    Edit,
    FeedbackEvent,
    Interaction,
    Rating,
    Regenerate,
    Thumbs,
)
from flywheel.simulator import BAD_KINDS, DEFAULT_MAX_EVENT_BYTES, Simulated, Summary, generate


def stream(events: int = 3000, seed: int = 1, bad_fraction: float = 0.0, **kw: object) -> list[Simulated]:
    return list(generate(events, seed=seed, bad_fraction=bad_fraction, **kw))  # type: ignore[arg-type]


def valid_events(sims: list[Simulated]) -> list[FeedbackEvent]:
    return [s.event for s in sims if s.expected_reason is None and s.event is not None]


@pytest.fixture(scope="module")
def clean() -> list[Simulated]:
    return stream(4000, seed=21)


@pytest.fixture(scope="module")
def mixed() -> list[Simulated]:
    return stream(3000, seed=22, bad_fraction=0.15)


# ---- reproducibility ----


def test_same_seed_same_bytes() -> None:
    first = stream(800, seed=5, bad_fraction=0.1)
    second = stream(800, seed=5, bad_fraction=0.1)

    assert first == second
    assert [s.value for s in first] == [s.value for s in second]


def test_different_seeds_differ_and_never_share_ids() -> None:
    a, b = stream(800, seed=5), stream(800, seed=6)

    assert [s.value for s in a] != [s.value for s in b]
    ids_a = {e.event_id for e in valid_events(a)} | {e.interaction_id for e in valid_events(a)}
    ids_b = {e.event_id for e in valid_events(b)} | {e.interaction_id for e in valid_events(b)}
    assert ids_a and not {str(i) for i in ids_a} & {str(i) for i in ids_b}


def test_event_ids_are_unique_within_a_run(mixed: list[Simulated]) -> None:
    ids = [orjson.loads(s.value)["event_id"] for s in mixed if s.expected_reason is None]

    assert len(ids) == len(set(ids))


# ---- exactly `events` messages, about `bad_fraction` of them bad ----


@pytest.mark.parametrize(("events", "bad_fraction"), [(0, 0.5), (1, 0.0), (1, 1.0), (7, 1.0), (997, 0.05),
                                                       (1000, 0.2), (50, 0.33)])
def test_exactly_events_messages_with_the_bad_fraction_honoured(events: int, bad_fraction: float) -> None:
    sims = stream(events, seed=3, bad_fraction=bad_fraction)
    bad = sum(s.expected_reason is not None for s in sims)

    assert len(sims) == events
    assert abs(bad - events * bad_fraction) <= 1


def test_bad_messages_are_spread_through_the_stream(mixed: list[Simulated]) -> None:
    quarters = Counter(i * 4 // len(mixed) for i, s in enumerate(mixed) if s.expected_reason is not None)

    assert all(abs(quarters[q] - len(mixed) * 0.15 / 4) <= 4 for q in range(4))


def test_bad_kinds_rotate_one_of_each(mixed: list[Simulated]) -> None:
    kinds = [s.expected_reason for s in mixed if s.expected_reason is not None]

    assert kinds[: 2 * len(BAD_KINDS)] == [*BAD_KINDS, *BAD_KINDS]
    counts = Counter(kinds)
    assert set(counts) == set(BAD_KINDS) and max(counts.values()) - min(counts.values()) <= 1


def test_no_bad_messages_unless_asked(clean: list[Simulated]) -> None:
    assert all(s.expected_reason is None for s in clean)


# ---- every expected_reason is what ingest really does ----


def test_expected_reason_is_what_parse_says(mixed: list[Simulated]) -> None:
    for sim in mixed:
        try:
            event = parse(sim.value, max_bytes=DEFAULT_MAX_EVENT_BYTES)
        except InvalidEvent as e:
            assert sim.expected_reason == e.reason, sim.value[:200]
            assert sim.event is None and sim.event_type is None
            continue
        # Parsing succeeds only for valid traffic and for feedback whose interaction never comes.
        assert sim.expected_reason in (None, UNKNOWN_INTERACTION)
        assert sim.event == event and sim.event_type == event.type


def test_oversize_follows_the_max_event_bytes_argument() -> None:
    limit = 20_000
    sims = stream(400, seed=4, bad_fraction=0.2, max_event_bytes=limit)
    oversize = [s for s in sims if s.expected_reason == OVERSIZE]

    assert oversize and all(limit < len(s.value) < DEFAULT_MAX_EVENT_BYTES for s in oversize)
    for sim in sims:
        if sim.expected_reason is None:
            assert len(sim.value) <= limit
            assert parse(sim.value, max_bytes=limit) == sim.event


def test_unknown_interaction_refers_to_nothing_ever_emitted(mixed: list[Simulated]) -> None:
    emitted = {e.interaction_id for e in valid_events(mixed) if isinstance(e, Interaction)}
    orphans = [s.event for s in mixed if s.expected_reason == UNKNOWN_INTERACTION]

    assert orphans and all(e is not None and e.interaction_id not in emitted for e in orphans)


def test_bad_messages_are_keyed_like_real_ones_except_batches(mixed: list[Simulated]) -> None:
    bad = [s for s in mixed if s.expected_reason is not None]

    assert all((s.key is None) == (s.expected_reason == "not_an_object") for s in bad)


# ---- causal order ----


def test_key_is_the_interaction_id(mixed: list[Simulated]) -> None:
    for sim in mixed:
        if sim.event_type is not None:
            assert sim.event is not None and sim.key == sim.event.interaction_id.encode()


def test_time_only_moves_forward(mixed: list[Simulated]) -> None:
    stamps = [e.occurred_at for s in mixed if s.event_type is not None for e in [s.event] if e is not None]
    start = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)

    assert stamps[0] > start
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


def test_start_moves_the_clock() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = valid_events(stream(50, seed=2, start=start))

    assert start < events[0].occurred_at < start + timedelta(hours=1)


def test_feedback_comes_after_the_interactions_it_refers_to(clean: list[Simulated]) -> None:
    emitted: set[str] = set()
    for e in valid_events(clean):
        if isinstance(e, Interaction):
            assert e.interaction_id not in emitted  # a duplicate would be dead-lettered
            emitted.add(e.interaction_id)
        else:
            assert set(e.referenced_interactions()) <= emitted, e


def test_comparisons_compare_two_emitted_answers_to_the_same_chat(clean: list[Simulated]) -> None:
    seen: dict[str, Interaction] = {}
    comparisons = 0
    for e in valid_events(clean):
        if isinstance(e, Interaction):
            seen[e.interaction_id] = e
        elif isinstance(e, Comparison):
            comparisons += 1
            chosen, rejected = seen[e.payload.chosen_interaction_id], seen[e.payload.rejected_interaction_id]
            assert e.interaction_id in (chosen.interaction_id, rejected.interaction_id)
            assert chosen.payload.messages == rejected.payload.messages
            assert chosen.user == rejected.user == e.user
    assert comparisons > 20


def test_a_regeneration_is_followed_by_its_new_interaction(clean: list[Simulated]) -> None:
    events = valid_events(clean)
    regenerations = [(i, e) for i, e in enumerate(events) if isinstance(e, Regenerate)]

    assert len(regenerations) > 20
    by_id = {e.interaction_id: e for e in events if isinstance(e, Interaction)}
    for i, regen in regenerations:
        new = events[i + 1]
        assert isinstance(new, Interaction) and new.interaction_id == regen.payload.new_interaction_id
        old = by_id[regen.interaction_id]
        assert old.payload.messages == new.payload.messages and old.interaction_id != new.interaction_id


def test_feedback_carries_the_context_of_its_interaction(clean: list[Simulated]) -> None:
    served: dict[str, Interaction] = {}
    for e in valid_events(clean):
        if isinstance(e, Interaction):
            served[e.interaction_id] = e
        else:
            origin = served[e.interaction_id]
            assert (e.app_id, e.model_version, e.prompt_version, e.user) == (
                origin.app_id, origin.model_version, origin.prompt_version, origin.user)


# ---- realistic enough to exercise the rest of the system ----


def test_traffic_has_the_variety_production_has(clean: list[Simulated]) -> None:
    events = valid_events(clean)
    interactions = [e for e in events if isinstance(e, Interaction)]
    by_app: dict[str, set[tuple[str, str]]] = {}
    for e in interactions:
        by_app.setdefault(e.app_id, set()).add((e.model_version, e.prompt_version))

    assert {e.type for e in events} == set(FEEDBACK_TYPES)
    assert len(by_app) >= 3
    assert all(len({m for m, _ in v}) >= 2 and len({p for _, p in v}) >= 2 for v in by_app.values())
    tags = {t for e in interactions for t in e.payload.tags}
    assert tags >= {"code", "math", "safety", "factuality", "tool_use"}
    turns = Counter(sum(m.role == "user" for m in e.payload.messages) for e in interactions)
    assert set(turns) == {1, 2, 3}
    with_system = sum(e.payload.messages[0].role == "system" for e in interactions)
    assert 0 < with_system < len(interactions)
    assert {e.user.consent_training for e in events} == {True, False}
    assert len({e.user.id_hash for e in events}) >= 15


def test_feedback_has_its_nuances(clean: list[Simulated]) -> None:
    events = valid_events(clean)
    served = {e.interaction_id: e.payload.response for e in events if isinstance(e, Interaction)}

    thumbs = [e.payload for e in events if isinstance(e, Thumbs)]
    assert {t.value for t in thumbs} == {"up", "down"}
    assert any(t.reason for t in thumbs) and not all(t.reason for t in thumbs)

    ratings = [e.payload for e in events if isinstance(e, Rating)]
    assert {r.score for r in ratings} == {1, 2, 3, 4, 5}
    assert any(r.dimension for r in ratings) and not all(r.dimension for r in ratings)

    strengths = {e.payload.strength for e in events if isinstance(e, Comparison)}
    assert strengths == {"much", "slightly", "tie"}

    edits = [(served[e.interaction_id], e.payload.edited_response) for e in events if isinstance(e, Edit)]
    assert all(before != after for before, after in edits)
    trivial = [1 for before, after in edits if abs(len(before) - len(after)) <= 4]
    assert 0 < len(trivial) < len(edits)


def test_pii_is_sprinkled_into_user_text_only(clean: list[Simulated]) -> None:
    redacted = 0
    interactions = [s for s in clean if s.event_type == "interaction"]
    for sim in interactions:
        e = sim.event
        assert isinstance(e, Interaction)
        r = Redactor()
        # Responses, system prompts and tool output are written without PII: redaction must not touch them.
        assert r(e.payload.response) == e.payload.response
        assert all(r(m.content) == m.content for m in e.payload.messages if m.role != "user")
        accepted = decode(sim.value, max_bytes=DEFAULT_MAX_EVENT_BYTES)
        redacted += accepted.redactions > 0
    assert 0.02 < redacted / len(interactions) < 0.12


# ---- the summary reconciles ----


def test_summary_counts_add_up(mixed: list[Simulated]) -> None:
    summary = Summary.of(mixed)

    assert summary.produced == len(mixed) == summary.valid + summary.bad
    assert summary.valid_by_type == dict(sorted(Counter(e.type for e in valid_events(mixed)).items()))
    assert summary.bad_by_reason == dict(sorted(Counter(s.expected_reason for s in mixed
                                                        if s.expected_reason is not None).items()))
    assert set(summary.bad_by_reason) <= set(REASONS)
    assert summary.as_dict() == {
        "produced": len(mixed),
        "valid": {"total": summary.valid, "by_type": summary.valid_by_type},
        "bad": {"total": summary.bad, "by_reason": summary.bad_by_reason},
    }
    text = summary.describe()
    assert str(summary.produced) in text and all(reason in text for reason in summary.bad_by_reason)


def test_summary_of_nothing() -> None:
    empty = Summary.of([])

    assert (empty.produced, empty.valid_by_type, empty.bad_by_reason) == (0, {}, {})


# ---- arguments and speed ----


@pytest.mark.parametrize(
    "kwargs",
    [{"events": -1}, {"bad_fraction": 1.5}, {"bad_fraction": -0.1}, {"max_event_bytes": 1000},
     {"start": datetime(2025, 1, 1)}],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"events": 10, "seed": 1} | kwargs
    with pytest.raises(ValueError):
        list(generate(**args))  # type: ignore[arg-type]


def test_generation_is_fast() -> None:
    # 100k events must take well under 10 s; 20k takes about 1 s, the margin is for slow machines.
    started = time.perf_counter()
    sims = stream(20_000, seed=9, bad_fraction=0.05)
    assert time.perf_counter() - started < 3.0
    assert len(sims) == 20_000
