"""The wire contract: a JSON Schema generated from the models and checked in, the README's example messages, and
reading an older schema_version through an upcaster (with a made-up version 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import jsonschema
import orjson
import pytest
from pydantic import create_model
from typer.testing import CliRunner

from flywheel.domain.validation import INVALID_FIELD, UNKNOWN_SCHEMA_VERSION, InvalidEvent, parse, validate
from flywheel.domain.wire import (
    EVENT_CLASSES,
    EVENT_TYPES,
    WIRE,
    BaseEvent,
    Thumbs,
    ThumbsPayload,
    WireFormat,
    json_schema,
    to_wire,
)
from flywheel.entrypoints.cli import app
from flywheel.entrypoints.cli.schema import schema_text
from tests.readme_examples import wire_examples

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "flywheel" / "domain" / "wire.schema.json"
MAX = 256 * 1024


def examples() -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in wire_examples()]


# ---- the published schema ----


def test_the_checked_in_schema_is_the_one_the_models_give() -> None:
    assert CHECKED_IN.read_text() == schema_text(json_schema()), "run: flywheel schema > " + str(CHECKED_IN)


def test_flywheel_schema_prints_it() -> None:
    done = CliRunner().invoke(app, ["schema"])
    assert done.exit_code == 0, done.output
    assert done.output == CHECKED_IN.read_text()
    assert json.loads(done.output)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_schema_covers_every_event_type_told_apart_by_type() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    for kind in EVENT_TYPES:
        event = schema["$defs"][EVENT_CLASSES[kind].__name__]
        assert event["properties"]["type"]["const"] == kind
        assert event["properties"]["schema_version"]["const"] == 1
        assert event["additionalProperties"] is False


# ---- the README's examples ----


def test_the_readme_has_one_valid_example_per_event_type() -> None:
    validator = jsonschema.Draft202012Validator(json_schema(), format_checker=jsonschema.FormatChecker())
    found = examples()
    assert sorted(e["type"] for e in found) == sorted(EVENT_TYPES)
    for raw, example in zip(wire_examples(), found, strict=True):
        errors = [e.message for e in validator.iter_errors(example)]
        assert not errors, (example["type"], errors)
        event = parse(raw, max_bytes=MAX)
        assert to_wire(event) == example, "an example says every field as the store keeps it"


def test_the_schema_and_the_models_both_refuse_a_field_they_do_not_know() -> None:
    """Why workers are upgraded before producers: a field added by a producer first is refused by older workers."""
    validator = jsonschema.Draft202012Validator(json_schema())
    thumbs = next(e for e in examples() if e["type"] == "thumbs")
    newer = {**thumbs, "payload": {**thumbs["payload"], "intensity": 3}}
    assert not validator.is_valid(newer)
    with pytest.raises(InvalidEvent) as refused:
        parse(orjson.dumps(newer), max_bytes=MAX)
    assert refused.value.reason == INVALID_FIELD and "intensity" in refused.value.detail


# ---- a made-up version 2: thumbs say `up: bool` instead of `value: "up" | "down"` ----


ThumbsPayloadV2 = create_model("ThumbsPayloadV2", __base__=ThumbsPayload, value=(None, None), up=(bool, ...))


def _v2(cls: type[BaseEvent]) -> type[BaseEvent]:
    fields: dict[str, Any] = {"schema_version": (Literal[2], ...)}
    if cls is Thumbs:
        fields["payload"] = (ThumbsPayloadV2, ...)
    return create_model(f"{cls.__name__}V2", __base__=cls, **fields)


def thumbs_value_to_up(event: dict[str, Any]) -> dict[str, Any]:
    """Version 1 → 2: a thumbs' `value` becomes `up`; every other type only changes its version."""
    event = {**event, "schema_version": 2}
    if event.get("type") == "thumbs":
        payload = dict(event["payload"])
        payload["up"] = {"up": True, "down": False}[payload.pop("value")]
        event["payload"] = payload
    return event


V2 = WireFormat(version=2, classes={kind: _v2(cls) for kind, cls in EVENT_CLASSES.items()},
                upcasters={1: thumbs_value_to_up})


def test_a_version_1_event_is_read_as_version_2_through_the_upcaster() -> None:
    thumbs = next(e for e in examples() if e["type"] == "thumbs")
    event = parse(orjson.dumps(thumbs), max_bytes=MAX, wire=V2)
    assert type(event).__name__ == "ThumbsV2"
    stored = to_wire(event)
    assert stored["schema_version"] == 2
    assert stored["payload"] == {"up": False, "reason": thumbs["payload"]["reason"]}
    assert stored["event_id"] == thumbs["event_id"], "the same event, said as version 2"
    assert to_wire(validate(thumbs, V2)) == stored, "a decoded dict is upcast the same way"


def test_versions_1_and_2_are_read_next_to_each_other() -> None:
    for example in examples():
        as_v2 = thumbs_value_to_up(example)
        old, new = (to_wire(parse(orjson.dumps(e), max_bytes=MAX, wire=V2)) for e in (example, as_v2))
        assert old == new and new["schema_version"] == 2, example["type"]


def test_what_the_upcaster_cannot_read_is_dead_lettered_not_a_crash() -> None:
    thumbs = next(e for e in examples() if e["type"] == "thumbs")
    sideways = {**thumbs, "payload": {"value": "sideways"}}
    with pytest.raises(InvalidEvent) as refused:
        parse(orjson.dumps(sideways), max_bytes=MAX, wire=V2)
    assert refused.value.reason == INVALID_FIELD and "cannot be read as 2" in refused.value.detail
    # A version-2 shape sent as version 1 is a version-1 event without its value: refused the same way.
    with pytest.raises(InvalidEvent):
        parse(orjson.dumps({**thumbs, "payload": {"up": True}}), max_bytes=MAX, wire=V2)


@pytest.mark.parametrize("version", [0, 3])
def test_a_version_neither_current_nor_upcast_is_unknown(version: int) -> None:
    thumbs = next(e for e in examples() if e["type"] == "thumbs")
    with pytest.raises(InvalidEvent) as refused:
        parse(orjson.dumps({**thumbs, "schema_version": version}), max_bytes=MAX, wire=V2)
    assert refused.value.reason == UNKNOWN_SCHEMA_VERSION


def test_todays_workers_dead_letter_version_2_until_they_are_upgraded() -> None:
    thumbs = thumbs_value_to_up(next(e for e in examples() if e["type"] == "thumbs"))
    assert WIRE.readable == {1}
    with pytest.raises(InvalidEvent) as refused:
        parse(orjson.dumps(thumbs), max_bytes=MAX)
    assert refused.value.reason == UNKNOWN_SCHEMA_VERSION


def test_an_upcaster_that_skips_a_version_is_refused() -> None:
    broken = WireFormat(version=2, classes=V2.classes, upcasters={1: lambda e: {**e, "schema_version": 3}})
    thumbs = next(e for e in examples() if e["type"] == "interaction")
    with pytest.raises(InvalidEvent, match="must give 2"):
        parse(orjson.dumps(thumbs), max_bytes=MAX, wire=broken)
