"""What a thumbs-up or thumbs-down becomes: a judgement of the response and a KTO label."""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from flywheel.domain.signals.judgement import OVERALL, Judgement
from flywheel.domain.signals.lineage import label
from flywheel.domain.signals.records import FeedbackRecord, KTOLabel
from flywheel.domain.signals.rules import THUMBS_LABEL

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def judge(g: PromptGroup, f: FeedbackRecord) -> Judgement:
    """A thumbs-up is for the response, a thumbs-down against it, overall."""
    up = f.payload["value"] == "up"
    return Judgement(OVERALL, up, "thumbs_up" if up else "thumbs_down", f)


def thumbs_label(g: PromptGroup, f: FeedbackRecord, disputed: Container[str]) -> KTOLabel:
    """thumbs_label: a thumbs-up labels the response desirable, a thumbs-down undesirable.

    Reason "thumbs_up" or "thumbs_down", at `confidence_thumbs`; every thumbs gives a label, also one that
    another judgement of the response contradicts (the label is then marked as a disagreement)."""
    up = f.payload["value"] == "up"
    return label(g, rule=THUMBS_LABEL, reason="thumbs_up" if up else "thumbs_down", f=f, desirable=up,
                 confidence=g.config.confidence_thumbs, disputed=disputed)
