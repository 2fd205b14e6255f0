"""Signal rules: one prompt group's interactions and feedback in; preference pairs, KTO labels, SFT samples out."""

from __future__ import annotations

from flywheel.domain.signals.config import SignalConfig
from flywheel.domain.signals.derive import (
    EVENT_HANDLERS,
    WINDOW_RULES,
    Unit,
    derive,
    derive_group,
    derive_units,
    signals,
)
from flywheel.domain.signals.edit import edit_distance
from flywheel.domain.signals.group import FEEDBACK_TYPES, Change, PromptGroup
from flywheel.domain.signals.judgement import OVERALL
from flywheel.domain.signals.order import order_key
from flywheel.domain.signals.prompt import prompt_key
from flywheel.domain.signals.reading import JUDGES
from flywheel.domain.signals.records import (
    HARD_CASE_REASONS,
    Disagreement,
    FeedbackRecord,
    HardCase,
    InteractionRecord,
    KTOLabel,
    PairStatus,
    PreferencePair,
    Record,
    SFTSample,
    Signals,
)
from flywheel.domain.signals.rules import (
    COMPARISON_PAIR,
    EDIT_PAIR,
    EDIT_SFT,
    RATING_LABEL,
    RATING_PAIR,
    REGENERATE_PAIR,
    RULES,
    THUMBS_LABEL,
)
from flywheel.domain.signals.score import normalised_score

__all__ = [
    "COMPARISON_PAIR",
    "EDIT_PAIR",
    "EDIT_SFT",
    "EVENT_HANDLERS",
    "FEEDBACK_TYPES",
    "HARD_CASE_REASONS",
    "JUDGES",
    "OVERALL",
    "RATING_LABEL",
    "RATING_PAIR",
    "REGENERATE_PAIR",
    "RULES",
    "THUMBS_LABEL",
    "WINDOW_RULES",
    "Change",
    "Disagreement",
    "FeedbackRecord",
    "HardCase",
    "InteractionRecord",
    "KTOLabel",
    "PairStatus",
    "PreferencePair",
    "PromptGroup",
    "Record",
    "SFTSample",
    "SignalConfig",
    "Signals",
    "Unit",
    "derive",
    "derive_group",
    "derive_units",
    "edit_distance",
    "normalised_score",
    "order_key",
    "prompt_key",
    "signals",
]
