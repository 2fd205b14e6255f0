"""A judgement: one feedback event read as for or against the single response it is about."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.domain.signals.records import FeedbackRecord

OVERALL = "overall"  # the aspect of thumbs, edits, regenerations and ratings without a dimension


@dataclass(frozen=True, slots=True)
class Judgement:
    """One feedback event read as for or against one interaction, within one aspect.

    Two judgements conflict only within one aspect: a low "tone" rating does not contradict a thumbs-up.
    `kind` says what was said (e.g. "thumbs_down", "edit", "rating_low:tone")."""

    aspect: str
    positive: bool
    kind: str
    event: FeedbackRecord
