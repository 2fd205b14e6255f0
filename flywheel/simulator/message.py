"""One simulated message for the feedback topic, and what ingest must make of it."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.domain.validation import parse
from flywheel.domain.wire import FeedbackEvent


@dataclass(frozen=True, slots=True)
class Simulated:
    """One message for the feedback topic and what ingest must make of it."""

    key: bytes | None
    value: bytes
    event_type: str | None  # the type of the well-formed event in `value`; None when it must not parse
    expected_reason: str | None  # None: stored; otherwise the dead-letter reason (flywheel.domain.validation)

    @property
    def event(self) -> FeedbackEvent | None:
        """The event `value` parses to, or None for malformed bytes.

        Parsed on access rather than held: a list of 100k messages then stays cheap to build and to keep.
        """
        return None if self.event_type is None else parse(self.value, max_bytes=len(self.value))
