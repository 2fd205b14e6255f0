"""Derive's order: the sort key of a derived record, stable while its group grows."""

from __future__ import annotations

from collections.abc import Mapping

from flywheel.domain.signals.records import (
    HARD_CASE_REASONS,
    Disagreement,
    HardCase,
    KTOLabel,
    PreferencePair,
    Record,
    SFTSample,
)


def order_key(record: Record, positions: Mapping[str, int], interaction_positions: Mapping[str, int]) -> bytes:
    """Where a record stands in derive's order among the records of its kind, as bytes that sort as that order
    does: by the log positions of its sources (a hard case: of its interaction), then its rule and id. It names
    positions, never an index, so a record keeps its key while its group grows (the signals read model
    rewrites only the rows that changed). `positions`: event id -> log position of the group's events."""
    if isinstance(record, HardCase):
        return (interaction_positions[record.interaction_id].to_bytes(8, "big") + _text_key(record.interaction_id)
                + HARD_CASE_REASONS.index(record.reason).to_bytes(1, "big"))
    # Each position behind a 1 and the tuple closed by a 0: a tuple sorts before the longer ones it begins.
    sources = b"".join(b"\x01" + positions[e].to_bytes(8, "big") for e in record.source_event_ids) + b"\x00"
    if isinstance(record, Disagreement):
        return sources + _text_key(record.disagreement_id)
    record_id = {PreferencePair: "pair_id", KTOLabel: "label_id", SFTSample: "sample_id"}[type(record)]
    return sources + _text_key(record.rule) + _text_key(getattr(record, record_id))


def _text_key(text: str) -> bytes:
    # UTF-8 sorts as code points do; stored text never holds NUL (Postgres refuses it), so NUL ends a string.
    return text.encode() + b"\x00"
