"""The wire schema: every event type round-trips, fields are strict, timestamps carry a zone."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from flywheel.domain.validation import INVALID_FIELD, InvalidEvent, parse
from flywheel.domain.wire import (
    EVENT_CLASSES,
    EVENT_TYPES,
    FEEDBACK_TYPES,
    FeedbackEvent,
    Interaction,
    Rating,
    to_wire,
)
from flywheel.simulator import generate
from tests.factories import comparison, event, thumbs

ASKED, OTHER = "ix-asked", "ix-other"
MAX = 256 * 1024

VALID: dict[str, dict[str, Any]] = {
    "interaction": event("interaction", ASKED, {
        "messages": [
            {"role": "system", "content": "You are a concise support assistant."},
            {"role": "user", "content": "Where is my order #482913?"},
            {"role": "assistant", "content": "Calling track_order."},
            {"role": "tool", "name": "track_order", "content": "status=in_transit eta=2 days"},
        ],
        "response": "It is in transit and should arrive in two days.",
        "sampling": {"temperature": 0.3, "top_p": 0.9, "max_tokens": 512, "seed": 7},
        "tags": ["tool_use", "factuality"],
        "finish_reason": "stop",
    }),
    "thumbs": event("thumbs", ASKED, {"value": "down", "reason": "made things up"}),
    "edit": event("edit", ASKED, {"edited_response": "It is in transit; the carrier says Thursday."}),
    "regenerate": event("regenerate", ASKED, {"new_interaction_id": OTHER}),
    "rating": event("rating", ASKED, {"score": 4, "scale": 5, "dimension": "helpfulness"}),
    "comparison": comparison(ASKED, OTHER, "slightly"),
    "erasure": {"event_id": "5d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a", "type": "erasure", "schema_version": 1,
                "occurred_at": "2026-11-23T12:00:00+00:00", "app_id": "support-bot",
                "user": {"id_hash": "u1"}, "payload": {"reason": "asked to be forgotten"}},
}


def parsed(wire: dict[str, Any]) -> FeedbackEvent:
    return parse(orjson.dumps(wire), max_bytes=MAX)


def changed(wire: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `wire` with the field at dotted `path` set to `value`."""
    out = copy.deepcopy(wire)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def rejection(wire: dict[str, Any]) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parsed(wire)
    return caught.value


def test_examples_cover_every_event_type() -> None:
    assert set(VALID) == set(EVENT_TYPES) == set(EVENT_CLASSES)


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_every_type_round_trips_through_the_wire_unchanged(kind: str) -> None:
    first = parsed(VALID[kind])
    again = parsed(to_wire(first))

    assert isinstance(first, EVENT_CLASSES[kind]) and first.type == kind
    assert again == first
    assert to_wire(again) == to_wire(first)


def test_to_wire_is_plain_json_without_nulls() -> None:
    wire = to_wire(parsed(VALID["thumbs"] | {"payload": {"value": "up"}}))

    assert isinstance(wire["event_id"], str) and isinstance(wire["occurred_at"], str)
    assert wire["payload"] == {"value": "up"}  # the absent reason is left out, not sent as null
    assert orjson.loads(orjson.dumps(wire)) == wire


def test_defaults_survive_the_round_trip() -> None:
    bare = event("interaction", ASKED, {"messages": [{"role": "user", "content": "hi"}], "response": "hello"})
    first = parsed(bare)

    assert isinstance(first, Interaction)
    assert first.payload.tags == [] and first.payload.sampling.temperature is None
    assert parsed(to_wire(first)) == first


def test_simulated_traffic_round_trips() -> None:
    seen = set()
    for sim in generate(1500, seed=3):
        e = sim.event
        assert e is not None
        assert parsed(to_wire(e)) == e
        seen.add(e.type)
    assert seen == set(FEEDBACK_TYPES)  # the simulator's users give feedback; none asks to be forgotten


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("rating", "payload.score", "5"),
        ("rating", "payload.score", 4.0),
        ("rating", "payload.score", True),
        ("rating", "payload.dimension", 3),
        ("thumbs", "payload.value", "sideways"),
        ("thumbs", "user.consent_training", "true"),
        ("thumbs", "user.consent_training", 1),
        ("thumbs", "event_id", "not-a-uuid"),
        ("thumbs", "event_id", 12),
        ("thumbs", "app_id", 5),
        ("thumbs", "app_id", ""),
        ("thumbs", "occurred_at", 1700000000),
        ("thumbs", "occurred_at", "1700000000"),
        ("thumbs", "occurred_at", "03/03/2025 09:00"),
        ("interaction", "payload.sampling.temperature", "0.7"),
        ("interaction", "payload.sampling.max_tokens", 1.5),
        ("interaction", "payload.tags", "code"),
        ("interaction", "payload.messages", []),
        ("interaction", "payload.messages.1.role", "robot"),
        ("interaction", "payload.response", None),
        ("regenerate", "payload.new_interaction_id", 42),
        ("comparison", "payload.strength", "very"),
    ],
)
def test_mistyped_fields_are_rejected_not_coerced(kind: str, path: str, value: Any) -> None:
    error = rejection(changed(VALID[kind], path, value))

    assert error.reason == INVALID_FIELD
    assert error.detail.startswith(path.split(".")[0])


def test_unknown_fields_are_rejected() -> None:
    assert rejection(VALID["thumbs"] | {"surprise": 1}).reason == INVALID_FIELD
    assert rejection(changed(VALID["rating"], "payload.stars", 5)).reason == INVALID_FIELD


@pytest.mark.parametrize("stamp", ["2025-03-03T09:00:00", "2025-03-03T09:00:00.250", "2025-03-03"])
def test_a_timestamp_without_a_zone_is_rejected(stamp: str) -> None:
    error = rejection(changed(VALID["thumbs"], "occurred_at", stamp))

    assert error.reason == INVALID_FIELD and "occurred_at" in error.detail


@pytest.mark.parametrize(
    ("stamp", "offset"),
    [("2025-03-03T09:00:00Z", 0), ("2025-03-03T09:00:00.125+05:30", 330), ("2025-03-03T01:00:00-08:00", -480),
     ("2025-03-03 09:00:00+01:00", 60)],
)
def test_a_timestamp_keeps_its_zone(stamp: str, offset: int) -> None:
    e = parsed(changed(VALID["thumbs"], "occurred_at", stamp))

    assert e.occurred_at.utcoffset() == timedelta(minutes=offset)


@pytest.mark.parametrize(
    ("path", "value"),
    [("payload.score", 0), ("payload.score", 6), ("payload.scale", 3)],
)
def test_a_rating_must_be_on_its_scale(path: str, value: int) -> None:
    wire = changed(VALID["rating"], path, value)
    if path == "payload.scale":
        wire["payload"]["score"] = 4

    assert rejection(wire).reason == INVALID_FIELD


def test_a_rating_on_another_scale_is_fine() -> None:
    e = parsed(changed(VALID["rating"], "payload", {"score": 8, "scale": 10}))

    assert isinstance(e, Rating)
    assert (e.payload.score, e.payload.scale) == (8, 10)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("payload.presented_order", [ASKED, ASKED]),
        ("payload.presented_order", [ASKED, "ix-third"]),
        ("payload.presented_order", [ASKED, OTHER, OTHER]),
        ("payload.rejected_interaction_id", ASKED),
        ("interaction_id", "ix-third"),
    ],
)
def test_a_comparison_must_name_two_distinct_interactions_consistently(path: str, value: Any) -> None:
    assert rejection(changed(VALID["comparison"], path, value)).reason == INVALID_FIELD


def test_referenced_interactions() -> None:
    assert parsed(VALID["interaction"]).referenced_interactions() == ()
    assert parsed(VALID["regenerate"]).referenced_interactions() == (ASKED,)
    assert parsed(VALID["comparison"]).referenced_interactions() == (ASKED, OTHER)
    flipped = comparison(OTHER, ASKED) | {"interaction_id": ASKED}
    assert parsed(flipped).referenced_interactions() == (OTHER, ASKED)


def test_events_are_immutable() -> None:
    e = parsed(thumbs(ASKED))

    with pytest.raises(ValidationError):
        e.app_id = "another-app"
    assert e.app_id == "support-bot"
