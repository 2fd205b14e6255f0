"""Tool-using conversations past the edge: one text view for every reader, TRL's form in the round files."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from flywheel.domain.messages import content_text, message_text, trl_messages, turns_text
from flywheel.domain.rounds import QuarantineItem, QuarantineList, RoundConfig, build, row_from_signal
from flywheel.domain.signals import FeedbackRecord, InteractionRecord, SignalConfig, derive, prompt_key
from flywheel.domain.validation import parse
from flywheel.domain.wire import Interaction
from sampling.generation import chat_messages
from sampling.hardcases import prompt_text
from sampling.judge import JudgeScorer
from store.signals import copy_key
from tests.factories import WEATHER_TOOL, raw, tool_interaction, tool_messages

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ANSWER = "It is sunny in Paris today, 21 degrees: a fine day for a walk."


def stored_messages(city: str = "Paris") -> tuple[dict[str, Any], ...]:
    """The conversation as the store holds it (nulls left out)."""
    event = parse(raw(tool_interaction("ix", city=city)), max_bytes=1 << 20)
    assert isinstance(event, Interaction)
    return InteractionRecord.from_event(event, 1).messages


def record(iid: str, pos: int, *, city: str = "Paris", response: str = ANSWER,
           tools: tuple[dict[str, Any], ...] = (WEATHER_TOOL,)) -> InteractionRecord:
    return InteractionRecord(
        interaction_id=iid, event_id=f"e{pos}", position=pos, app_id="weather-bot", model_version="m-1",
        prompt_version="p-1", user_id_hash="u1", consent_training=True, occurred_at=T0,
        messages=stored_messages(city), response=response, tags=(), tools=tools)


def feedback(kind: str, iid: str, pos: int, **payload: Any) -> FeedbackRecord:
    return FeedbackRecord(event_id=f"e{pos}", position=pos, type=kind, interaction_id=iid, user_id_hash="u1",
                          consent_training=True, occurred_at=T0, payload=payload)


# ---- the text view ----


def test_the_text_of_a_message_is_its_content_then_its_calls() -> None:
    user, call, result = stored_messages()[1:]
    assert message_text(user) == "What is the weather in Paris?"
    assert message_text(call) == 'get_weather({"city":"Paris"})'
    assert message_text(result) == "Paris: 21 C, sunny"
    both = {**call, "content": "Let me look."}
    assert message_text(both) == 'Let me look.\nget_weather({"city":"Paris"})'
    # Spacing and key order of the arguments as the model wrote them do not change the text.
    spaced = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": '{ "b": 1,  "a": 2 }'}}]}
    assert message_text(spaced) == 'f({"a":2,"b":1})' == message_text(trl_messages([spaced])[0])


def test_plain_text_reads_as_it_always_did() -> None:
    assert content_text("hi") == message_text({"role": "user", "content": "hi"}) == "hi"
    assert content_text(None) == "" and content_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) \
        == "a\nb"
    assert turns_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"


def test_the_prompt_key_of_a_plain_conversation_is_unchanged() -> None:
    # Keys computed before tool use was part of the schema: stored groups keep their keys.
    assert prompt_key([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi", "name": None}]) \
        == "b77e85cb0820a4228ca91826a92139a5"
    assert prompt_key([{"role": "user", "content": "Where is my order?"},
                       {"role": "assistant", "content": "Calling track_order."},
                       {"role": "tool", "name": "track_order", "content": "in transit"}]) \
        == "61413598d24191b58a4a06184ca92356"


def test_text_parts_key_as_their_text_and_tools_are_part_of_the_prompt() -> None:
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert prompt_key(as_parts) == prompt_key([{"role": "user", "content": "hi"}])
    messages = stored_messages()
    assert prompt_key(messages, [WEATHER_TOOL]) != prompt_key(messages)
    assert prompt_key(messages, []) == prompt_key(messages)
    assert record("i1", 1).prompt_key == prompt_key(messages, [WEATHER_TOOL])


def test_sampling_and_judging_read_the_text_view() -> None:
    messages = stored_messages()
    assert prompt_text(messages) == "What is the weather in Paris?"
    judge = JudgeScorer(None, "Grade it.", None, model="judge", model_version="j1")  # type: ignore[arg-type]
    graded = judge.prompts(messages, ["Sunny."])[0][1]["content"]
    assert '[assistant]\nget_weather({"city":"Paris"})' in graded and "[tool]\nParis: 21 C, sunny" in graded


def test_the_engine_gets_tool_calls_and_plain_messages_as_before() -> None:
    plain = [{"role": "user", "content": "hi", "name": "ann"}]
    assert chat_messages(plain) == ({"role": "user", "content": "hi"},)
    sent = chat_messages(stored_messages())
    assert sent[2] == {"role": "assistant", "content": None, "tool_calls": stored_messages()[2]["tool_calls"]}
    assert sent[3]["tool_call_id"] == "call_1" and sent[1]["content"] == [{"type": "text", "text":
                                                                           "What is the weather in Paris?"}]


# ---- TRL's form ----


def test_trl_form_decodes_arguments_and_names_each_tool_result() -> None:
    system, user, call, result = trl_messages(stored_messages())
    assert call == {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert result == {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "Paris: 21 C, sunny"}
    assert (system, user) == stored_messages()[:2]


def test_trl_form_keeps_plain_messages_and_what_it_cannot_decode() -> None:
    plain = ({"role": "user", "content": "hi"}, {"role": "tool", "name": "track", "content": "x"})
    out = trl_messages(plain)
    assert out == list(plain) and out[0] is not plain[0]
    odd = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "not json"}}]}
    named = {"role": "tool", "tool_call_id": "c", "name": "given", "content": "x"}
    assert trl_messages([odd, named])[0]["tool_calls"][0]["function"]["arguments"] == "not json"
    assert trl_messages([odd, named])[1]["name"] == "given"


def test_signals_carry_the_tools_and_round_rows_are_trl_tool_calling_rows() -> None:
    better = "Sunny and 21 C in Paris: take sunglasses, and no coat is needed this afternoon."
    signals = derive([record("i1", 1)], [feedback("thumbs", "i1", 2, value="up"),
                                         feedback("edit", "i1", 3, edited_response=better)], SignalConfig())
    (label,), (sample,), (pair,) = signals.kto_labels, signals.sft_samples, signals.pairs
    assert label.tools == sample.tools == pair.tools == (WEATHER_TOOL,)

    def row(kind: str, r: object) -> dict[str, Any]:
        made = row_from_signal(kind, orjson.loads(orjson.dumps(r)), 3)
        assert made is not None
        return made.body

    prompt = trl_messages(stored_messages())
    assert row("kto", label) == {"prompt": prompt, "completion": [{"role": "assistant", "content": ANSWER}],
                                 "label": True, "tools": [WEATHER_TOOL]}
    assert row("sft", sample) == {"messages": [*prompt, {"role": "assistant", "content": better}],
                                  "tools": [WEATHER_TOOL]}
    assert row("pair", pair)["tools"] == [WEATHER_TOOL] and row("pair", pair)["prompt"] == prompt


def test_a_conversation_without_tools_has_no_tools_column_and_keeps_its_copy_key() -> None:
    plain = record("i1", 1, tools=())
    (label,) = derive([plain], [feedback("thumbs", "i1", 2, value="up")], SignalConfig()).kto_labels
    made = row_from_signal("kto", orjson.loads(orjson.dumps(label)), 2)
    assert made is not None and "tools" not in made.body
    with_tools = derive([record("i1", 1)], [feedback("thumbs", "i1", 2, value="up")], SignalConfig()).kto_labels[0]
    assert copy_key(label) != copy_key(with_tools)


# ---- the gates read the same text ----


def build_rows(tmp_path: Path, records: list[InteractionRecord], quarantine: QuarantineList | None = None
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for n, r in enumerate(records):
        thumbs_up = feedback("thumbs", r.interaction_id, 100 + n, value="up")
        for label in derive([r], [thumbs_up], SignalConfig()).kto_labels:
            made = row_from_signal("kto", orjson.loads(orjson.dumps(label)), 100 + n)
            assert made is not None
            rows.append(made)
    result = build(rows, RoundConfig(), quarantine or QuarantineList(version="q", items=()), tmp_path,
                   watermark=1000, parent=None, round_number=1)
    lines = [orjson.loads(line) for f in sorted(tmp_path.glob("*/kto.jsonl")) for line in f.read_bytes().splitlines()]
    return lines, result.manifest


def test_conversations_that_differ_only_in_a_tool_call_are_both_kept(tmp_path: Path) -> None:
    lines, _ = build_rows(tmp_path, [record("i1", 1, city="Paris"), record("i2", 2, city="Rome")])
    assert len(lines) == 2
    assert lines[0]["prompt"][2]["tool_calls"][0]["function"]["arguments"] in ({"city": "Paris"}, {"city": "Rome"})


def test_pii_left_in_tool_call_arguments_is_caught_by_the_pii_gate(tmp_path: Path) -> None:
    leaked = record("i1", 1)
    call = dict(leaked.messages[2])
    call["tool_calls"] = [{"id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"email": "ann@example.com"}'}}]
    leaked = replace(leaked, messages=(*leaked.messages[:2], call, leaked.messages[3]), prompt_key="")
    lines, manifest = build_rows(tmp_path, [leaked])
    assert lines == [] and manifest["sample_processing"]["removed"]["pii"]["kto"] == 1


def test_a_benchmark_item_inside_a_tool_result_is_caught_by_contamination(tmp_path: Path) -> None:
    item = ("The mitochondria is the powerhouse of the cell and produces most of the chemical energy needed to "
            "power the biochemical reactions of the cell")
    leaked = record("i1", 1)
    result = {**leaked.messages[3], "content": item}
    leaked = replace(leaked, messages=(*leaked.messages[:3], result), prompt_key="")
    quarantine = QuarantineList(version="q", items=(QuarantineItem(item_id="bio-1", list_name="bio", prompt=item,
                                                                   answer="Mitochondria."),))
    lines, manifest = build_rows(tmp_path, [leaked], quarantine)
    assert lines == [] and manifest["sample_processing"]["removed"]["contamination"]["kto"] == 1


def test_factories_send_the_conversation_the_tests_expect() -> None:
    assert tool_messages()[2]["content"] is None and tool_interaction("x")["payload"]["tools"] == [WEATHER_TOOL]


# ---- a served response cut at max_tokens ----


def test_the_finish_reason_of_a_served_response_reaches_the_signals() -> None:
    wire = tool_interaction("ix")
    wire["payload"]["finish_reason"] = "length"
    event = parse(raw(wire), max_bytes=1 << 20)
    assert isinstance(event, Interaction) and InteractionRecord.from_event(event, 1).finish_reason == "length"

    cut, whole = replace(record("i1", 1), finish_reason="length"), replace(record("i2", 2), finish_reason="stop")
    signals = derive([cut, whole], [feedback("thumbs", "i1", 3, value="up"),
                                    feedback("comparison", "i1", 4, chosen_interaction_id="i1",
                                             rejected_interaction_id="i2", presented_order=["i1", "i2"],
                                             strength="much")], SignalConfig())
    (label,), (pair,) = signals.kto_labels, signals.pairs
    assert label.finish_reason == "length" and label.desirable
    assert (pair.chosen_finish_reason, pair.rejected_finish_reason) == ("length", "stop")


def rows_of(records: list[InteractionRecord], feedback_records: list[FeedbackRecord]) -> list[Any]:
    signals = derive(records, feedback_records, SignalConfig())
    out = []
    for kind, found in (("pair", signals.pairs), ("kto", signals.kto_labels), ("sft", signals.sft_samples)):
        for r in found:
            row = row_from_signal(kind, orjson.loads(orjson.dumps(r)), 10)
            assert row is not None
            out.append(row)
    return out


def test_a_response_cut_by_length_is_no_desirable_label_and_no_side_of_a_pair(tmp_path: Path) -> None:
    better = "Sunny and 21 C in Paris: take sunglasses, and no coat is needed this afternoon."
    cut = replace(record("i1", 1, response="It is sunny in Paris today, 21 degrees: a fine"), finish_reason="length")
    rows = rows_of([cut], [feedback("thumbs", "i1", 2, value="up"), feedback("edit", "i1", 3, edited_response=better)])
    by_rule = {r.source: r for r in rows}
    assert by_rule["thumbs_label"].truncated() and by_rule["thumbs_label"].lineage["finish_reasons"] == ["length"]
    assert by_rule["edit_pair"].lineage["finish_reasons"] == [None, "length"]
    # The user's edit is their own text, not the cut response: it stays an SFT sample.
    assert not by_rule["edit_sft"].truncated() and "finish_reasons" not in by_rule["edit_sft"].lineage

    result = build(rows, RoundConfig(), QuarantineList(version="q", items=()), tmp_path, watermark=10,
                   parent=None, round_number=1)
    processing = result.manifest["sample_processing"]
    assert processing["quality_reasons"]["truncated"] == {"sft": 0, "dpo": 1, "kto": 1, "group": 0}
    assert processing["rows_out_by_kind"] == {"sft": 1, "dpo": 0, "kto": 0, "group": 0}


def test_a_response_that_finished_keeps_the_row_it_always_made() -> None:
    for finish in ("stop", None, "tool_calls"):
        (row,) = rows_of([replace(record("i1", 1), finish_reason=finish)], [feedback("thumbs", "i1", 2, value="up")])
        assert not row.truncated() and "finish_reasons" not in row.lineage
