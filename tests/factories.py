"""Hand-written wire events for tests."""

from __future__ import annotations

import uuid
from typing import Any

import orjson


def event(kind: str, interaction_id: str, payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "schema_version": 1,
        "occurred_at": "2026-11-23T10:00:00+00:00",
        "app_id": "support-bot",
        "interaction_id": interaction_id,
        "model_version": "m-1",
        "prompt_version": "p-1",
        "user": {"id_hash": "u1", "consent_training": True},
        "payload": payload,
    }
    base.update(overrides)
    return base


def interaction(interaction_id: str, prompt: str = "How do I reset my password?",
                response: str = "Open settings, then security.", **overrides: Any) -> dict[str, Any]:
    return event("interaction", interaction_id,
                 {"messages": [{"role": "user", "content": prompt}], "response": response, "tags": []}, **overrides)


def thumbs(interaction_id: str, value: str = "up", **overrides: Any) -> dict[str, Any]:
    return event("thumbs", interaction_id, {"value": value}, **overrides)


def comparison(chosen: str, rejected: str, strength: str = "much", **overrides: Any) -> dict[str, Any]:
    return event("comparison", chosen, {"chosen_interaction_id": chosen, "rejected_interaction_id": rejected,
                                        "presented_order": [rejected, chosen], "strength": strength}, **overrides)


def raw(e: dict[str, Any]) -> bytes:
    return orjson.dumps(e)


WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def tool_messages(city: str = "Paris", call_id: str = "call_1") -> list[dict[str, Any]]:
    """An OpenAI-style tool-using conversation up to the final answer: a call (null content) and its result."""
    return [
        {"role": "system", "content": "You answer with the tools you have."},
        {"role": "user", "content": [{"type": "text", "text": f"What is the weather in {city}?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": orjson.dumps({"city": city}).decode()}}]},
        {"role": "tool", "tool_call_id": call_id, "content": f"{city}: 21 C, sunny"},
    ]


def tool_interaction(interaction_id: str, city: str = "Paris", response: str = "It is sunny, 21 C.",
                     **overrides: Any) -> dict[str, Any]:
    return event("interaction", interaction_id,
                 {"messages": tool_messages(city), "response": response, "tools": [WEATHER_TOOL],
                  "finish_reason": "stop"}, **overrides)
