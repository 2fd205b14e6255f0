"""Entries of the append-only event log: what is appended, and what is read back with its global position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flywheel.domain.events import InternalEvent


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    type: str
    occurred_at: str
    data: dict[str, Any]
    interaction_id: str | None = None
    app_id: str | None = None

    @classmethod
    def internal(cls, event: InternalEvent, *, at: str) -> NewEvent:
        """The log entry of an event the system records itself, stamped `at` (RFC 3339)."""
        data = {"event_id": event.event_id, "type": event.TYPE, "schema_version": 1, "occurred_at": at,
                **event.fields(), "payload": event.payload()}
        return cls(event_id=event.event_id, type=event.TYPE, occurred_at=at, data=data)

    @classmethod
    def of(cls, data: dict[str, Any]) -> NewEvent:
        """The log entry of a stored-form feedback event (flywheel.domain.validation.Accepted.data)."""
        return cls(event_id=data["event_id"], type=data["type"], occurred_at=data["occurred_at"], data=data,
                   interaction_id=data.get("interaction_id"), app_id=data["app_id"])


@dataclass(frozen=True, slots=True)
class StoredEvent:
    position: int
    event_id: str
    type: str
    data: dict[str, Any]
