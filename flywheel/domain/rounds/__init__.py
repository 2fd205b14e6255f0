"""Round builder core: rows up to a watermark, a config and a quarantine list in; reproducible round files out."""

from __future__ import annotations

from flywheel.domain.rounds.builder import RoundResult, build
from flywheel.domain.rounds.config import BUILDER_VERSION, RoundConfig
from flywheel.domain.rounds.dedup import content_digest
from flywheel.domain.rounds.distribution_cap import DistributionCap
from flywheel.domain.rounds.entries import Entry, Prepared, Removed, Repeat
from flywheel.domain.rounds.files import FILE_NAMES, MANIFEST
from flywheel.domain.rounds.gates import GATES
from flywheel.domain.rounds.manifest import content_hash
from flywheel.domain.rounds.pii import has_pii
from flywheel.domain.rounds.prepare import Prepare
from flywheel.domain.rounds.quality import QUALITY_REASONS, quality_reason
from flywheel.domain.rounds.quarantine import QuarantineIndex, QuarantineItem, QuarantineList, normalise
from flywheel.domain.rounds.report import report_html
from flywheel.domain.rounds.rows import (
    KINDS,
    SOURCE_CANDIDATE_GROUP,
    SOURCE_RM_SELECTION,
    SOURCE_RSFT,
    Kind,
    Row,
    row_from_signal,
    rows_from_group,
)
from flywheel.domain.rounds.split import AUDIT, CALIBRATION, SPLITS, TRAIN, split_of

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
