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
