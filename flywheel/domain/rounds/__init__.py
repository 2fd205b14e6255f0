"""Round builder core: rows up to a watermark, a config and a quarantine list in; reproducible round files out."""

from __future__ import annotations

from flywheel.domain.rounds.builder import (
    FILE_NAMES,
    MANIFEST,
    Entry,
    Prepare,
    Prepared,
    Removed,
    RoundResult,
    build,
    content_hash,
)
from flywheel.domain.rounds.config import BUILDER_VERSION, RoundConfig
from flywheel.domain.rounds.gates import (
    AUDIT,
    CALIBRATION,
    GATES,
    QUALITY_REASONS,
    SPLITS,
    TRAIN,
    DistributionCap,
    content_digest,
    has_pii,
    quality_reason,
    split_of,
)
from flywheel.domain.rounds.quarantine import QuarantineIndex, QuarantineItem, QuarantineList, normalise
from flywheel.domain.rounds.report import report_html
from flywheel.domain.rounds.rows import (
    KINDS,
    SOURCE_CANDIDATE_GROUP,
    SOURCE_RM_SELECTION,
    SOURCE_RSFT,
    Kind,
    Repeat,
    Row,
    row_from_signal,
    rows_from_group,
)

__all__ = [
    "AUDIT",
    "BUILDER_VERSION",
    "CALIBRATION",
    "FILE_NAMES",
    "GATES",
    "KINDS",
    "MANIFEST",
    "QUALITY_REASONS",
    "SOURCE_CANDIDATE_GROUP",
    "SOURCE_RM_SELECTION",
    "SOURCE_RSFT",
    "SPLITS",
    "TRAIN",
    "DistributionCap",
    "Entry",
    "Kind",
    "Prepare",
    "Prepared",
    "QuarantineIndex",
    "QuarantineItem",
    "QuarantineList",
    "RoundConfig",
    "Removed",
    "Repeat",
    "RoundResult",
    "Row",
    "build",
    "content_digest",
    "content_hash",
    "has_pii",
    "normalise",
    "quality_reason",
    "report_html",
    "row_from_signal",
    "rows_from_group",
    "split_of",
]
