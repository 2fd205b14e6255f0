"""Bad input of every kind ingest must dead-letter, each built the way a real producer gets it wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from flywheel.domain.validation import (
    BAD_ENCODING,
    BAD_JSON,
    INVALID_FIELD,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    OVERSIZE,
    UNKNOWN_INTERACTION,
    UNKNOWN_SCHEMA_VERSION,
    UNKNOWN_TYPE,
)
from flywheel.simulator.feedback import _Feedback
from flywheel.simulator.message import Simulated
from flywheel.simulator.world import _Served

# Bad input comes in this rotation, one of each kind in turn.
BAD_KINDS = (
    BAD_ENCODING,
    BAD_JSON,
    NOT_AN_OBJECT,
    UNKNOWN_TYPE,
    UNKNOWN_SCHEMA_VERSION,
    MISSING_FIELD,
    INVALID_FIELD,
    OVERSIZE,
    UNKNOWN_INTERACTION,
)


class _Traffic(_Feedback):
    """All the traffic: the valid kind, and bad input in the rotation of BAD_KINDS."""

    def bad(self, kind: str) -> Simulated:
        """One message that ingest must dead-letter with reason `kind`."""
        return _BAD_BUILDERS[kind](self)

    def _phantom(self) -> _Served:
        """A response that is never emitted: bad messages about it can never be stored by accident."""
        return self._serve(self._start_chat())

    def _target(self) -> _Served:
        return self._pick_recent() if self.recent else self._phantom()

    def _feedback_wire(self, kind: str, target: _Served | None = None) -> dict[str, Any]:
        target = target or self._target()
        payloads = {"thumbs": self._thumbs, "rating": self._rating, "edit": self._edit}
        return self._envelope(kind, target, payloads[kind](target))

    def _interaction_wire(self, target: _Served) -> dict[str, Any]:
        payload = {"messages": list(target.chat.messages), "response": target.response,
                   "tags": list(target.chat.tags)}
        return self._envelope("interaction", target, payload)

    def _bad_encoding(self) -> Simulated:
        # A legacy producer that writes Latin-1 instead of UTF-8.
        wire = self._interaction_wire(self._phantom())
        follow_up = "Merci ! Et pour la facture de février, le reçu est déjà envoyé ?"
        wire["payload"]["messages"].append({"role": "user", "content": follow_up})
        value = orjson.dumps(wire).decode().encode("latin-1", errors="replace")
        return Simulated(wire["interaction_id"].encode(), value, None, BAD_ENCODING)

    def _bad_json(self) -> Simulated:
        # A producer that died mid-write: cut at a character boundary so it is bad JSON, not bad UTF-8.
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating")))
        text = orjson.dumps(wire).decode()
        cut = self.rng.randint(1, len(text) - 1)
        return Simulated(wire["interaction_id"].encode(), text[:cut].encode(), None, BAD_JSON)

    def _not_an_object(self) -> Simulated:
        # A producer that batches events into one array message.
        batch = [self._feedback_wire("thumbs"), self._feedback_wire("rating")]
        return Simulated(None, orjson.dumps(batch), None, NOT_AN_OBJECT)

    def _unknown_type(self) -> Simulated:
        # A newer app release emitting a feedback kind this service does not know yet.
        wire = self._feedback_wire("thumbs")
        wire["type"] = self.rng.choice(("bookmark", "share", "copy_code", "report"))
        wire["payload"] = {}
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, UNKNOWN_TYPE)

    def _unknown_schema_version(self) -> Simulated:
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating", "edit")))
        wire["schema_version"] = 99
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, UNKNOWN_SCHEMA_VERSION)

    def _missing_field(self) -> Simulated:
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating")))
        where = self.rng.choice(("event_id", "occurred_at", "app_id", "model_version", "user", "payload",
                                 "user.consent_training", "payload.value_or_score"))
        if where == "user.consent_training":
            del wire["user"]["consent_training"]
        elif where == "payload.value_or_score":
            wire["payload"].pop("value", None)
            wire["payload"].pop("score", None)
        else:
            del wire[where]
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, MISSING_FIELD)

    def _invalid_field(self) -> Simulated:
        wire = self._feedback_wire("rating")
        mistake = self.rng.randrange(5)
        if mistake == 0:
            wire["payload"]["score"] = str(wire["payload"]["score"])  # "5": strict, never coerced
        elif mistake == 1:
            wire["payload"]["score"] = 7  # outside the 1..5 scale
        elif mistake == 2:
            wire["occurred_at"] = wire["occurred_at"][:-6]  # no timezone
        elif mistake == 3:
            wire["user"]["consent_training"] = "yes"
        else:
            wire["type"], wire["payload"] = "thumbs", {"value": "sideways"}
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, INVALID_FIELD)

    def _oversize(self) -> Simulated:
        # Someone pasted a whole build log into the chat.
        wire = self._interaction_wire(self._phantom())
        overhead = len(orjson.dumps(wire))
        line = "2025-03-03T09:00:00Z INFO worker-3 step=compile target=//services/api:server cache=miss\n"
        count = (self.max_event_bytes - overhead) // len(line) + 1 + self.rng.randint(0, 20)
        log = "Here's the full build log:\n" + line * count
        wire["payload"]["messages"].append({"role": "user", "content": log})
        value = orjson.dumps(wire)
        return Simulated(wire["interaction_id"].encode(), value, None, OVERSIZE)

    def _unknown_interaction(self) -> Simulated:
        # Well-formed feedback about an interaction that never arrives (its producer lost it): it is parked,
        # then dead-lettered after the grace period.
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating")), self._phantom())
        value = orjson.dumps(wire)
        return Simulated(wire["interaction_id"].encode(), value, wire["type"], UNKNOWN_INTERACTION)


_BAD_BUILDERS: dict[str, Callable[[_Traffic], Simulated]] = {
    BAD_ENCODING: _Traffic._bad_encoding,
    BAD_JSON: _Traffic._bad_json,
    NOT_AN_OBJECT: _Traffic._not_an_object,
    UNKNOWN_TYPE: _Traffic._unknown_type,
    UNKNOWN_SCHEMA_VERSION: _Traffic._unknown_schema_version,
    MISSING_FIELD: _Traffic._missing_field,
    INVALID_FIELD: _Traffic._invalid_field,
    OVERSIZE: _Traffic._oversize,
    UNKNOWN_INTERACTION: _Traffic._unknown_interaction,
}
