"""Decode → validate → redact: the pure edge every consumed message goes through."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from flywheel.domain.redact import Redactor
from flywheel.domain.wire import (
    ROLE_ORDER_ERROR,
    WIRE,
    BaseEvent,
    FeedbackEvent,
    WireFormat,
    to_wire,
)

# Machine-readable reasons a message is dead-lettered.
BAD_ENCODING = "bad_encoding"
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
OVERSIZE = "oversize"
UNKNOWN_TYPE = "unknown_type"
UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"
ROLE_ORDER = "role_order"  # a conversation's roles out of order (flywheel.domain.messages.role_order_problem)
UNKNOWN_INTERACTION = "unknown_interaction"
DUPLICATE_INTERACTION = "duplicate_interaction"
REASONS = (
    BAD_ENCODING,
    BAD_JSON,
    NOT_AN_OBJECT,
    OVERSIZE,
    UNKNOWN_TYPE,
    UNKNOWN_SCHEMA_VERSION,
    MISSING_FIELD,
    INVALID_FIELD,
    ROLE_ORDER,
    UNKNOWN_INTERACTION,
    DUPLICATE_INTERACTION,
)


class InvalidEvent(ValueError):
    """An event that must not enter the store; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Accepted:
    event: FeedbackEvent
    data: dict[str, Any]  # the redacted event, as stored
    redactions: int


def parse(raw: bytes, *, max_bytes: int, wire: WireFormat = WIRE) -> FeedbackEvent:
    """Validate one wire message (an older readable schema_version is upcast to the current one); raises
    InvalidEvent with a reason code."""
    if len(raw) > max_bytes:
        raise InvalidEvent(OVERSIZE, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidEvent(BAD_ENCODING, f"not UTF-8 at byte {e.start}") from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidEvent(BAD_JSON, str(e)) from None
    if not isinstance(obj, dict):
        raise InvalidEvent(NOT_AN_OBJECT, f"top level is {type(obj).__name__}")
    cls = _checked_class(obj, wire)
    if obj["schema_version"] == wire.version:
        return _validate_json(cls, raw)
    return validate(_upcast(obj, wire), wire)


def validate(obj: dict[str, Any], wire: WireFormat = WIRE) -> FeedbackEvent:
    """Validate a decoded event dict (an older readable schema_version is upcast to the current one); raises
    InvalidEvent with a reason code."""
    cls = _checked_class(obj, wire)
    if obj["schema_version"] != wire.version:
        obj = _upcast(obj, wire)
        cls = _checked_class(obj, wire)
    try:
        raw = orjson.dumps(obj)
    except orjson.JSONEncodeError as e:  # e.g. an int beyond 64 bits, or a value JSON cannot carry
        raise InvalidEvent(INVALID_FIELD, f"not representable as JSON: {e}") from None
    return _validate_json(cls, raw)


_STARTS_WITH_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _upcast(obj: dict[str, Any], wire: WireFormat) -> dict[str, Any]:
    version = obj["schema_version"]
    try:
        return wire.upcast(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # an old event too broken to upcast
        raise InvalidEvent(INVALID_FIELD, f"schema_version {version} cannot be read as {wire.version}: "
                                          f"{type(e).__name__}: {e}") from None


def _checked_class(obj: dict[str, Any], wire: WireFormat) -> type[BaseEvent]:
    cls = _event_class(obj, wire)
    at = obj.get("occurred_at")
    # Strict JSON mode still reads a string like "1700000000" as Unix time in UTC, a zone nobody sent.
    if isinstance(at, str) and not _STARTS_WITH_DATE.match(at):
        raise InvalidEvent(INVALID_FIELD, "occurred_at: must be an RFC 3339 date-time with a zone")
    return cls


def _event_class(obj: dict[str, Any], wire: WireFormat) -> type[BaseEvent]:
    if "type" not in obj:
        raise InvalidEvent(MISSING_FIELD, "type: field required")
    kind = obj.get("type")
    cls = wire.classes.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidEvent(UNKNOWN_TYPE, f"type {kind!r} is not one of {sorted(wire.classes)}")
    version = obj.get("schema_version")
    if version is None:
        raise InvalidEvent(MISSING_FIELD, "schema_version: field required")
    if type(version) is not int or version not in wire.readable:
        raise InvalidEvent(UNKNOWN_SCHEMA_VERSION, f"schema_version {version!r} for type {kind}")
    return cls


def _validate_json(cls: type[BaseEvent], raw: bytes) -> FeedbackEvent:
    try:
        # JSON mode: strict types, but RFC 3339 strings for datetimes and UUIDs as JSON carries them.
        return cls.model_validate_json(raw)  # type: ignore[return-value]
    except ValidationError as e:
        raise _reason_of(e) from None


def _reason_of(e: ValidationError) -> InvalidEvent:
    errors = e.errors(include_url=False, include_input=False)
    # A conversation out of order is its own reason, whatever else is wrong with the event.
    first = next((err for err in errors if err["type"] == ROLE_ORDER_ERROR), errors[0])
    where = ".".join(str(p) for p in first["loc"]) or "event"
    reason = {"missing": MISSING_FIELD, ROLE_ORDER_ERROR: ROLE_ORDER}.get(first["type"], INVALID_FIELD)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidEvent(reason, f"{where}: {first['msg']}{more}")


def redact_event(event: FeedbackEvent, redactor: Redactor | None = None) -> Accepted:
    """The stored form of an event: every free-text field passed through the redactor: a message's text and tool
    call arguments (redact_message), the response, a tool definition's description and parameter schema
    (redact_json), an edit, a thumbs reason."""
    r = redactor or Redactor()
    before = sum(r.counts.values())
    data = to_wire(event)
    p = data["payload"]
    match event.type:
        case "interaction":
            for m in p["messages"]:
                redact_message(m, r)
            p["response"] = r(p["response"])
            for tool in p.get("tools", ()):
                function = tool["function"]
                for field in ("description", "parameters"):
                    if field in function:
                        function[field] = redact_json(function[field], r)
        case "edit":
            p["edited_response"] = r(p["edited_response"])
        case "thumbs" | "erasure" if "reason" in p:
            p["reason"] = r(p["reason"])
    return Accepted(event=event, data=data, redactions=sum(r.counts.values()) - before)


def redact_message(message: dict[str, Any], r: Redactor) -> None:
    """Redact a wire message in place: its text (a string, or each text part), and each tool call's arguments
    (redact_arguments). Roles, names and ids are identifiers, left as sent."""
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = r(content)
    elif content is not None:
        for part in content:
            part["text"] = r(part["text"])
    for call in message.get("tool_calls", ()):
        function = call["function"]
        function["arguments"] = redact_arguments(function["arguments"], r)


def redact_arguments(arguments: str, r: Redactor) -> str:
    """A tool call's arguments, redacted so they stay the JSON they were: when they parse, every string and number
    inside passes the redactor on its own (redact_json) and the JSON is written again, compactly, only if something
    was replaced (else the text is kept byte for byte); text that is not JSON is redacted as text. Redacting the
    JSON text itself could eat its quotes (`"password": "..."`) and leave it unreadable."""
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return r(arguments)
    redacted = redact_json(value, r)
    return arguments if redacted == value else orjson.dumps(redacted).decode()


def redact_json(value: Any, r: Redactor, key: str | None = None) -> Any:
    """A JSON value with every string passed through the redactor, read with the name of the member it is the
    value of (Redactor.member: `{"password": "..."}` is a secret as `password: ...` is), and every integer the
    redactor would replace as text (a card number sent as a number) replaced by the placeholder. Object keys are
    names, left as they are."""
    if isinstance(value, dict):
        return {k: redact_json(v, r, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v, r, key) for v in value]
    if isinstance(value, str):
        return r(value) if key is None else r.member(key, value)
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        redacted = r(text) if key is None else r.member(key, text)
        return value if redacted == text else redacted
    return value


def decode(raw: bytes, *, max_bytes: int) -> Accepted:
    """parse + redact: what the ingest worker does to every message."""
    return redact_event(parse(raw, max_bytes=max_bytes))
