"""The ingest edge: each reason code from the right input, never another exception, redacted storage."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any, get_args, get_origin

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from flywheel.domain.validation import (
    BAD_ENCODING,
    BAD_JSON,
    DUPLICATE_INTERACTION,
    INVALID_FIELD,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    OVERSIZE,
    REASONS,
    ROLE_ORDER,
    UNKNOWN_INTERACTION,
    UNKNOWN_SCHEMA_VERSION,
    UNKNOWN_TYPE,
    InvalidEvent,
    decode,
    parse,
    redact_event,
    validate,
)
from flywheel.domain.wire import EVENT_CLASSES, to_wire
from flywheel.simulator import generate
from tests.factories import event, interaction, raw, thumbs

MAX = 64 * 1024
STORE_REASONS = {UNKNOWN_INTERACTION, DUPLICATE_INTERACTION}  # decided by the store, never by parse


def without(wire: dict[str, Any], *path: str | int) -> dict[str, Any]:
    out = copy.deepcopy(wire)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def rating(score: Any = 4, **payload: Any) -> dict[str, Any]:
    return event("rating", "ix-1", {"score": score, **payload})


GOOD = raw(thumbs("ix-1"))
LATIN_1 = json.dumps(thumbs("ix-1", app_id="café-bot"), ensure_ascii=False).encode("latin-1")

CASES: list[tuple[str, bytes, str]] = [
    ("latin-1", LATIN_1, BAD_ENCODING),
    ("stray byte", b'{"type": "thumbs", "x": "\xff"}', BAD_ENCODING),
    ("encoded surrogate", b'{"type": "\xed\xa0\x80"}', BAD_ENCODING),
    ("truncated", GOOD[: len(GOOD) // 2], BAD_JSON),
    ("empty", b"", BAD_JSON),
    ("NaN", b'{"score": NaN}', BAD_JSON),
    ("single quotes", b"{'type': 'thumbs'}", BAD_JSON),
    ("trailing comma", b'{"type": "thumbs",}', BAD_JSON),
    ("lone surrogate escape", b'{"type": "\\ud800"}', BAD_JSON),
    ("array", b"[" + GOOD + b"]", NOT_AN_OBJECT),
    ("string", b'"thumbs"', NOT_AN_OBJECT),
    ("number", b"42", NOT_AN_OBJECT),
    ("null", b"null", NOT_AN_OBJECT),
    ("too big", raw(interaction("ix-1", prompt="x" * MAX)), OVERSIZE),
    ("too big and not UTF-8", b"\xff" * (MAX + 1), OVERSIZE),
    ("new type", raw(event("bookmark", "ix-1", {})), UNKNOWN_TYPE),
    ("type case", raw(event("Thumbs", "ix-1", {"value": "up"})), UNKNOWN_TYPE),
    ("type not a string", raw(event(5, "ix-1", {"value": "up"})), UNKNOWN_TYPE),  # type: ignore[arg-type]
    ("type null", raw(event(None, "ix-1", {"value": "up"})), UNKNOWN_TYPE),  # type: ignore[arg-type]
    ("version 99", raw(thumbs("ix-1", schema_version=99)), UNKNOWN_SCHEMA_VERSION),
    ("version 0", raw(thumbs("ix-1", schema_version=0)), UNKNOWN_SCHEMA_VERSION),
    ("version as string", raw(thumbs("ix-1", schema_version="1")), UNKNOWN_SCHEMA_VERSION),
    ("version as float", raw(thumbs("ix-1", schema_version=1.0)), UNKNOWN_SCHEMA_VERSION),
    ("version as bool", raw(thumbs("ix-1", schema_version=True)), UNKNOWN_SCHEMA_VERSION),
    ("no version", raw(without(thumbs("ix-1"), "schema_version")), MISSING_FIELD),
    ("no type", raw(without(thumbs("ix-1"), "type")), MISSING_FIELD),
    ("no event id", raw(without(thumbs("ix-1"), "event_id")), MISSING_FIELD),
    ("no payload", raw(without(thumbs("ix-1"), "payload")), MISSING_FIELD),
    ("no score", raw(without(rating(), "payload", "score")), MISSING_FIELD),
    ("no consent", raw(without(thumbs("ix-1"), "user", "consent_training")), MISSING_FIELD),
    ("score as string", raw(rating("5")), INVALID_FIELD),
    ("naive timestamp", raw(thumbs("ix-1", occurred_at="2025-03-03T09:00:00")), INVALID_FIELD),
    ("extra field", raw(thumbs("ix-1", surprise=True)), INVALID_FIELD),
    ("system prompt last", raw(interaction("ix-1") | {"payload": {"response": "r", "messages": [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."}]}}), ROLE_ORDER),
]


def outcome(value: bytes) -> str:
    """"ok", or the reason parse gave; any exception other than InvalidEvent escapes and fails the test."""
    try:
        e = parse(value, max_bytes=MAX)
    except InvalidEvent as error:
        assert error.reason in REASONS and error.reason not in STORE_REASONS
        return error.reason
    assert parse(orjson.dumps(to_wire(e)), max_bytes=MAX) == e
    return "ok"


@pytest.mark.parametrize(("value", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_bad_input_gets_its_reason(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse(value, max_bytes=MAX)

    assert caught.value.reason == reason
    assert str(caught.value).startswith(f"{reason}: ") and caught.value.detail


def test_the_cases_cover_every_reason_parse_can_give() -> None:
    assert {reason for *_, reason in CASES} == set(REASONS) - STORE_REASONS


def test_feedback_about_an_unseen_interaction_parses_the_store_decides() -> None:
    # unknown_interaction and duplicate_interaction need the store's knowledge; parse must let them through.
    assert parse(raw(thumbs("ix-never-seen")), max_bytes=MAX).interaction_id == "ix-never-seen"
    first, second = (parse(raw(interaction("ix-1")), max_bytes=MAX) for _ in range(2))
    assert first.interaction_id == second.interaction_id and first.event_id != second.event_id


def test_the_size_limit_is_inclusive() -> None:
    assert parse(GOOD, max_bytes=len(GOOD)).type == "thumbs"
    with pytest.raises(InvalidEvent) as caught:
        parse(GOOD, max_bytes=len(GOOD) - 1)
    assert caught.value.reason == OVERSIZE


def test_invalid_event_is_a_value_error_with_reason_and_detail() -> None:
    error = InvalidEvent(BAD_JSON, "line 1")

    assert isinstance(error, ValueError)
    assert (error.reason, error.detail, str(error)) == (BAD_JSON, "line 1", "bad_json: line 1")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (thumbs("ix-1"), None),
        (event("bookmark", "ix-1", {}), UNKNOWN_TYPE),
        (thumbs("ix-1", schema_version=2), UNKNOWN_SCHEMA_VERSION),
        (without(thumbs("ix-1"), "user"), MISSING_FIELD),
        (rating("5"), INVALID_FIELD),
    ],
)
def test_validate_of_a_dict_agrees_with_parse_of_its_bytes(wire: dict[str, Any], reason: str | None) -> None:
    def run(check: Any) -> Any:
        try:
            return check()
        except InvalidEvent as e:
            return e.reason

    from_dict, from_bytes = run(lambda: validate(wire)), run(lambda: parse(raw(wire), max_bytes=MAX))

    assert from_dict == from_bytes
    assert (from_dict if isinstance(from_dict, str) else None) == reason


# ---- redaction of what is stored ----


def test_decode_redacts_every_free_text_field_of_an_interaction() -> None:
    wire = interaction("ix-1", prompt="I'm ann@example.com, call +1 415-555-0132",
                       response="Mailed ann@example.com")
    wire["payload"]["messages"].insert(0, {"role": "system", "content": "Escalate to ops@example.com"})
    accepted = decode(raw(wire), max_bytes=MAX)
    messages = accepted.data["payload"]["messages"]

    assert messages[0]["content"] == "Escalate to [EMAIL]"
    assert messages[1]["content"] == "I'm [EMAIL], call [PHONE]"
    assert accepted.data["payload"]["response"] == "Mailed [EMAIL]"
    assert accepted.redactions == 4
    # The parsed event is what arrived; only `data` (what is stored) is redacted.
    assert "ann@example.com" in accepted.event.payload.messages[1].content  # type: ignore[union-attr]


def test_decode_redacts_thumbs_reasons_and_edits() -> None:
    down = decode(raw(thumbs("ix-1", "down") | {"payload": {"value": "down", "reason": "mail me: a@b.co"}}),
                  max_bytes=MAX)
    edit = decode(raw(event("edit", "ix-1", {"edited_response": "key sk-proj-abcdefghijklmnop1234"})),
                  max_bytes=MAX)

    assert down.data["payload"] == {"value": "down", "reason": "mail me: [EMAIL]"} and down.redactions == 1
    assert edit.data["payload"] == {"edited_response": "key [SECRET]"} and edit.redactions == 1


def test_events_without_free_text_are_stored_as_sent() -> None:
    for wire in (rating(5, dimension="tone"), event("regenerate", "ix-1", {"new_interaction_id": "ix-2"})):
        accepted = decode(raw(wire), max_bytes=MAX)
        assert accepted.redactions == 0
        assert accepted.data == to_wire(accepted.event)


def test_redact_event_counts_per_event_with_a_shared_redactor() -> None:
    from flywheel.domain.redact import Redactor

    shared = Redactor()
    one = interaction("ix-1", prompt="a@example.com")
    two = interaction("ix-2", prompt="b@example.com c@example.com")
    first = redact_event(parse(raw(one), max_bytes=MAX), shared)
    second = redact_event(parse(raw(two), max_bytes=MAX), shared)

    assert (first.redactions, second.redactions) == (1, 2)
    assert shared.counts["EMAIL"] == 3


# ---- properties: whatever arrives, parse answers with an event or a reason ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=20,
)
SAMPLES = [sim.event for sim in generate(300, seed=11)]
SAMPLE_WIRES = [to_wire(e) for e in SAMPLES if e is not None]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_parse_or_give_a_reason(value: bytes) -> None:
    assert outcome(value) in {"ok", *REASONS}


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_parses_or_gives_a_reason(value: Any) -> None:
    assert outcome(json.dumps(value).encode()) in {"ok", *REASONS}


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([*EVENT_CLASSES, "bookmark"]),
    version=st.sampled_from([1, 1, 1, 2, "1", None]),
    fields=st.dictionaries(
        st.sampled_from(["event_id", "occurred_at", "app_id", "interaction_id", "model_version",
                         "prompt_version", "user", "payload", "extra"]),
        json_values,
    ),
)
def test_event_shaped_json_parses_or_gives_a_reason(kind: str, version: Any, fields: dict[str, Any]) -> None:
    wire = {"type": kind, "schema_version": version, **fields}
    assert outcome(json.dumps(wire).encode()) in {"ok", *REASONS}


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_valid_event_with_one_field_replaced_parses_or_gives_a_reason(data: st.DataObject) -> None:
    wire = copy.deepcopy(data.draw(st.sampled_from(SAMPLE_WIRES)))
    *parents, last = data.draw(st.sampled_from(list(paths(wire))))
    node = wire
    for key in parents:
        node = node[key]
    node[last] = data.draw(json_values)

    assert outcome(json.dumps(wire).encode()) in {"ok", *REASONS}  # json: integers beyond 64 bits too


def required_paths(model: type[BaseModel], data: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """Paths of the fields in `data` that `model` requires, nested models and lists of them included."""
    for name, info in model.model_fields.items():
        if name not in data:
            continue
        if info.is_required():
            yield (name,)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from ((name, *p) for p in required_paths(annotation, data[name]))
        elif get_origin(annotation) is list:
            (item,) = get_args(annotation)
            if isinstance(item, type) and issubclass(item, BaseModel):
                for i, element in enumerate(data[name]):
                    yield from ((name, i, *p) for p in required_paths(item, element))


def test_required_paths_reach_nested_fields() -> None:
    wire = to_wire(parse(raw(interaction("ix-1")), max_bytes=MAX))
    found = set(required_paths(EVENT_CLASSES["interaction"], wire))

    assert {("type",), ("user", "consent_training"), ("payload", "messages", 0, "role")} <= found
    assert ("payload", "sampling") not in found and ("payload", "tags") not in found


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_dropping_any_required_field_gives_missing_field(data: st.DataObject) -> None:
    wire = data.draw(st.sampled_from(SAMPLE_WIRES))
    path = data.draw(st.sampled_from(list(required_paths(EVENT_CLASSES[wire["type"]], wire))))

    with pytest.raises(InvalidEvent) as caught:
        parse(orjson.dumps(without(wire, *path)), max_bytes=MAX)

    assert caught.value.reason == MISSING_FIELD
    assert caught.value.detail.startswith(".".join(str(p) for p in path))


def test_validate_refuses_a_dict_json_cannot_carry_with_a_reason() -> None:
    from flywheel.domain.validation import INVALID_FIELD, InvalidEvent, validate
    from tests.factories import event

    with pytest.raises(InvalidEvent) as caught:
        validate(event("rating", "i1", {"score": 2**70}))
    assert caught.value.reason == INVALID_FIELD


def test_an_integer_beyond_64_bits_is_an_invalid_field_not_a_crash_at_storage() -> None:
    # found by the hypothesis test above: orjson reads it as a float, pydantic as an int orjson cannot write
    import json

    from tests.factories import interaction

    event = interaction("i1")
    event["payload"]["sampling"] = {"max_tokens": -(2**63) - 1}
    assert outcome(json.dumps(event).encode()) == INVALID_FIELD
