"""Tool-using conversations at the edge: OpenAI-style fields accepted, roles checked in order, text redacted."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.domain.messages import role_order_problem
from flywheel.domain.redact import Redactor
from flywheel.domain.validation import (
    INVALID_FIELD,
    MISSING_FIELD,
    ROLE_ORDER,
    InvalidEvent,
    decode,
    parse,
    redact_arguments,
    validate,
)
from flywheel.domain.wire import SCHEMA_VERSION, Interaction, to_wire
from tests.factories import interaction, raw, tool_interaction, tool_messages

MAX = 64 * 1024


def with_messages(messages: list[dict[str, Any]], **payload: Any) -> dict[str, Any]:
    wire = interaction("ix-1")
    wire["payload"] = {"messages": messages, "response": "Done.", **payload}
    return wire


def call(call_id: str, name: str = "get_weather", arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def reason_of(wire: dict[str, Any]) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse(raw(wire), max_bytes=MAX)
    return caught.value.reason


def test_an_openai_style_tool_conversation_is_accepted_at_schema_version_1() -> None:
    wire = tool_interaction("ix-1")
    event = parse(raw(wire), max_bytes=MAX)

    assert isinstance(event, Interaction) and SCHEMA_VERSION == 1
    p = event.payload
    assert p.messages[2].content is None and p.messages[2].tool_calls is not None
    assert p.messages[2].tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert p.messages[3].tool_call_id == "call_1" and p.tools is not None and p.tools[0].function.name == "get_weather"
    # What is stored is what was sent; a null content is left out, as every null is.
    sent = copy.deepcopy(wire["payload"])
    del sent["messages"][2]["content"]
    assert to_wire(event)["payload"] == sent | {"sampling": {}, "tags": []}
    assert parse(orjson.dumps(to_wire(event)), max_bytes=MAX) == event
    assert validate(wire) == event  # what FeedbackClient.send checks a dict with


def test_a_tool_message_without_an_id_after_an_assistant_turn_is_still_accepted() -> None:
    # How apps wrote a tool's output before tool calls were in the schema (and the simulator still does).
    wire = with_messages([{"role": "user", "content": "Where is my order?"},
                          {"role": "assistant", "content": "Calling track_order."},
                          {"role": "tool", "name": "track_order", "content": "in transit"}])
    assert parse(raw(wire), max_bytes=MAX).type == "interaction"


@pytest.mark.parametrize(("messages", "detail"), [
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."}],
     "messages.1: a system message after other roles"),
    ([{"role": "system", "content": "s"}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
     "messages.1: a tool message that answers no assistant message"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}],
     "messages.1: a tool message that answers no assistant message"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call("call_1")]},
      {"role": "tool", "tool_call_id": "call_2", "content": "x"}],
     "messages.2: tool_call_id 'call_2' is not a call of the assistant message before it"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call("call_1")]},
      {"role": "tool", "tool_call_id": "call_1", "content": "x"}, {"role": "tool", "tool_call_id": "call_1",
                                                                   "content": "y"}],
     "messages.3: tool_call_id 'call_1' is already answered"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call("call_1")]},
      {"role": "user", "content": "go on"}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
     "messages.3: a tool message that answers no assistant message"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call("call_1")]},
      {"role": "tool", "tool_call_id": "call_1", "content": "x"},
      {"role": "assistant", "tool_calls": [call("call_1")]}],
     "messages.3: tool call id 'call_1' is used twice"),
])
def test_roles_out_of_order_are_dead_lettered_as_role_order(messages: list[dict[str, Any]], detail: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse(raw(with_messages(messages)), max_bytes=MAX)

    assert caught.value.reason == ROLE_ORDER
    assert caught.value.detail.startswith("payload: ")
    assert detail in caught.value.detail


def test_several_calls_are_answered_in_any_order_and_later_turns_go_on() -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "s"}, {"role": "system", "content": "t"},
                {"role": "user", "content": "Paris and Rome?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [call("a"), call("b")]},
                {"role": "tool", "tool_call_id": "b", "content": "Rome: 25 C"},
                {"role": "tool", "tool_call_id": "a", "content": "Paris: 21 C"},
                {"role": "assistant", "content": "Both warm."}, {"role": "user", "content": "Thanks"}]
    assert role_order_problem(messages) is None
    assert parse(raw(with_messages(messages)), max_bytes=MAX).type == "interaction"


@pytest.mark.parametrize(("message", "reason"), [
    ({"role": "user"}, MISSING_FIELD),
    ({"role": "user", "content": None}, MISSING_FIELD),
    ({"role": "assistant", "content": None}, MISSING_FIELD),
    ({"role": "user", "content": "hi", "tool_calls": [call("c")]}, INVALID_FIELD),
    ({"role": "assistant", "content": "hi", "tool_call_id": "c"}, INVALID_FIELD),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}, INVALID_FIELD),
    ({"role": "user", "content": []}, INVALID_FIELD),
    ({"role": "assistant", "tool_calls": []}, INVALID_FIELD),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]},
     MISSING_FIELD),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                            "function": {"name": "f", "arguments": {"city": "Paris"}}}]},
     INVALID_FIELD),
])
def test_a_message_with_fields_its_role_cannot_have_gets_a_field_reason(message: dict[str, Any],
                                                                         reason: str) -> None:
    assert reason_of(with_messages([message])) == reason


def test_validate_of_a_dict_agrees_with_parse_on_role_order() -> None:
    wire = with_messages([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}])
    with pytest.raises(InvalidEvent) as caught:
        validate(wire)
    assert caught.value.reason == ROLE_ORDER == reason_of(wire)


ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
IDS = st.sampled_from(["a", "b", "c"])


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for role in draw(st.lists(ROLES, min_size=1, max_size=8)):
        m: dict[str, Any] = {"role": role, "content": "x"}
        if role == "assistant" and draw(st.booleans()):
            m["tool_calls"] = [call(i) for i in draw(st.lists(IDS, min_size=1, max_size=2))]
        if role == "tool" and draw(st.booleans()):
            m["tool_call_id"] = draw(IDS)
        out.append(m)
    return out


@settings(max_examples=300, deadline=None)
@given(conversations())
def test_any_conversation_is_stored_or_dead_lettered_with_a_reason(messages: list[dict[str, Any]]) -> None:
    problem = role_order_problem(messages)
    try:
        parse(raw(with_messages(messages)), max_bytes=MAX)
    except InvalidEvent as e:
        assert e.reason == ROLE_ORDER and problem is not None and problem in e.detail
    else:
        assert problem is None


# ---- redaction ----


def test_text_parts_and_tool_call_arguments_are_redacted_and_stay_json() -> None:
    messages = tool_messages()
    messages[1]["content"] = [{"type": "text", "text": "I am ann@example.com"}, {"type": "text", "text": "ok"}]
    messages[2]["tool_calls"][0]["function"] = {"name": "book", "arguments": orjson.dumps(
        {"email": "ann@example.com", "card": 4111111111111111, "password": "hunter2hunter2",
         "nested": {"note": "call +1 415-555-0132"}, "count": 2}).decode()}
    messages[3]["content"] = "booked for ann@example.com"
    tool = {"type": "function", "function": {"name": "book", "description": "Ask ops@example.com first",
                                             "parameters": {"type": "object", "properties": {}}}}
    accepted = decode(raw(with_messages(messages, tools=[tool])), max_bytes=MAX)
    stored = accepted.data["payload"]

    assert stored["messages"][1]["content"] == [{"type": "text", "text": "I am [EMAIL]"},
                                                {"type": "text", "text": "ok"}]
    call_stored = stored["messages"][2]["tool_calls"][0]
    assert orjson.loads(call_stored["function"]["arguments"]) == {
        "email": "[EMAIL]", "card": "[CARD]", "password": "[SECRET]", "nested": {"note": "call [PHONE]"}, "count": 2}
    assert (call_stored["id"], call_stored["function"]["name"]) == ("call_1", "book")  # identifiers as sent
    assert stored["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "booked for [EMAIL]"}
    assert stored["tools"][0]["function"]["description"] == "Ask [EMAIL] first"
    assert accepted.redactions == 7
    # What is stored still parses: the redacted arguments are JSON, the placeholders plain strings.
    assert parse(orjson.dumps(accepted.data), max_bytes=MAX).type == "interaction"


def test_arguments_with_nothing_to_redact_are_kept_byte_for_byte() -> None:
    r = Redactor()
    spaced = '{ "city" :  "Paris",\n "days": [1, 2] }'
    assert redact_arguments(spaced, r) is spaced and r.counts == {}


def test_arguments_that_are_not_json_are_redacted_as_text() -> None:
    r = Redactor()
    assert redact_arguments("city=Paris; mail ann@example.com", r) == "city=Paris; mail [EMAIL]"
    assert r.counts == {"EMAIL": 1}


def test_a_plain_conversation_is_stored_as_it_always_was() -> None:
    wire = interaction("ix-1", prompt="mail me at ann@example.com")
    stored = decode(raw(wire), max_bytes=MAX).data["payload"]
    assert stored["messages"] == [{"role": "user", "content": "mail me at [EMAIL]"}]
    assert set(stored) == {"messages", "response", "sampling", "tags"}
