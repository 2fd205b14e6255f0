"""Tool-using conversations on the real stack: raw JSON bytes on the feedback topic → worker → a round."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from flywheel.settings import Endpoints, Settings
from store.db import connect_sync, create_schema
from streams.topics import ensure_topics
from tests.conftest import wait_until
from tests.factories import WEATHER_TOOL, event, raw, tool_interaction
from tests.integration.test_signals_store import drift, ingest_all

pytestmark = pytest.mark.integration

BETTER = "Sunny and 21 C in Paris this afternoon: sunglasses yes, coat no. I booked nothing for you."


def counts(settings: Settings) -> Callable[[], bool]:
    def check() -> bool:
        with connect_sync(settings.database_url) as conn:
            stored = conn.execute("SELECT count(*) FROM events WHERE data ? 'user'").fetchone()
            dead = conn.execute("SELECT reason, detail FROM dead_letters").fetchall()
        check.last = (stored, dead)  # type: ignore[attr-defined]
        return stored == (5,) and len(dead) == 1

    return check


def test_a_tool_conversation_sent_as_raw_bytes_reaches_a_round_as_sent_after_redaction(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[[], subprocess.Popen[bytes]],
) -> None:
    ensure_topics(settings.kafka_bootstrap, settings)
    start_worker()
    served = tool_interaction("tool-1")
    messages = served["payload"]["messages"]
    messages[1]["content"].append({"type": "text", "text": "Text me on +1 415-555-0132."})
    messages[2]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris", "notify": "ann@example.com"}'
    cut = tool_interaction("tool-2", city="Rome", response="It is sunny in Rome today, 25 degrees: a fine")
    cut["payload"]["finish_reason"] = "length"
    out_of_order = tool_interaction("tool-3")
    out_of_order["payload"]["messages"].reverse()
    events = [served, cut, out_of_order,
              event("thumbs", "tool-1", {"value": "up"}), event("edit", "tool-1", {"edited_response": BETTER}),
              event("thumbs", "tool-2", {"value": "up"})]
    # Bytes written by hand, as an app without FeedbackClient would: kafka-python's producer, no validation.
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    for e in events:
        producer.send(settings.feedback_topic, key=e["interaction_id"].encode(), value=json.dumps(e).encode())
    producer.flush()
    producer.close()
    wait_until(counts(settings), timeout=180, what="five events stored and one dead-lettered")

    with connect_sync(settings.database_url) as conn:
        [(reason, detail)] = conn.execute("SELECT reason, detail FROM dead_letters").fetchall()
    assert reason == "role_order" and "messages.0: a tool message that answers no assistant message" in detail

    built = json.loads(run_cli("rounds", "build", "--json").stdout)
    root = Path(built["path"])
    rows: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(root.glob("*/*.jsonl")):
        rows.setdefault(f.name, []).extend(json.loads(line) for line in f.read_text().splitlines())

    # What was sent, redacted, in TRL's tool-calling form: the null content left out, the arguments an object,
    # the tool result named after its call; the tools as offered.
    prompt = [
        {"role": "system", "content": "You answer with the tools you have."},
        {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"},
                                     {"type": "text", "text": "Text me on [PHONE]."}]},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris", "notify": "[EMAIL]"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "Paris: 21 C, sunny"},
    ]
    answer = [{"role": "assistant", "content": "It is sunny, 21 C."}]
    [kto] = rows["kto.jsonl"]
    assert {k: kto[k] for k in ("prompt", "completion", "label", "tools")} == {
        "prompt": prompt, "completion": answer, "label": True, "tools": [WEATHER_TOOL]}
    assert kto["lineage"]["interaction_id"] == "tool-1" and "finish_reasons" not in kto["lineage"]
    [sft] = rows["sft.jsonl"]
    assert {k: sft[k] for k in ("messages", "tools")} == {
        "messages": [*prompt, {"role": "assistant", "content": BETTER}], "tools": [WEATHER_TOOL]}
    [dpo] = rows["dpo.jsonl"]
    assert (dpo["prompt"], dpo["chosen"], dpo["rejected"], dpo["tools"]) == (
        prompt, [{"role": "assistant", "content": BETTER}], answer, [WEATHER_TOOL])
    assert rows["groups.jsonl"] == []

    # The thumbs-up on the response cut at max_tokens made a label, and the quality gate took it out.
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["sample_processing"]["quality_reasons"]["truncated"]["kto"] == 1
    assert "ann@example.com" not in (root / "manifest.json").read_text()
    assert not any("ann@example.com" in f.read_text() or "415-555" in f.read_text() for f in root.glob("*/*.jsonl"))
    check = run_cli("replay", "--check").stdout
    assert "interactions   ok" in check and "signals        ok" in check


def test_an_interactions_table_from_before_gets_tools_and_finish_reasons_from_the_log(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    cut = tool_interaction("tool-2")
    cut["payload"]["finish_reason"] = "length"
    ingest_all(url, [raw(tool_interaction("tool-1")), raw(cut), raw(event("thumbs", "tool-2", {"value": "up"}))],
               [3])
    with connect_sync(url) as conn:
        want = conn.execute("SELECT interaction_id, tools, finish_reason FROM interactions ORDER BY 1").fetchall()
        labels = conn.execute("SELECT data->>'finish_reason' FROM signals WHERE kind = 'kto'").fetchall()
        assert labels == [("length",)] and want[1][1:] == ([WEATHER_TOOL], "length")
        # The shape the previous version made, its signals derived without finish reasons.
        conn.execute("ALTER TABLE interactions DROP COLUMN tools, DROP COLUMN finish_reason")
        conn.execute("UPDATE signals SET data = (data::jsonb - 'finish_reason')::json")
        conn.commit()
    create_schema(url)
    with connect_sync(url) as conn:
        assert conn.execute("SELECT interaction_id, tools, finish_reason FROM interactions ORDER BY 1"
                            ).fetchall() == want
        assert conn.execute("SELECT count(*) FROM signals").fetchone() == (0,)
    ingest_all(url, [], [1])  # the projector derives them again from the start of the log
    with connect_sync(url) as conn:
        assert conn.execute("SELECT data->>'finish_reason' FROM signals WHERE kind = 'kto'").fetchall() == labels
    assert all(d == (0, 0) for d in drift(url).values())
