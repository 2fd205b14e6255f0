"""What users and jobs ask of the rounds, as commands: imperative, frozen, keyword-only."""

from __future__ import annotations

from dataclasses import dataclass, field

from flywheel.domain.rounds import RoundConfig
from flywheel.domain.signals import SignalConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRound:
    """Cut the next round from the log up to `watermark` (default: as far as signals are derived, after
    deriving them up to the head)."""

    config: RoundConfig = field(default_factory=RoundConfig)
    watermark: int | None = None
    signals: SignalConfig | None = None  # rules to derive the rows with when the watermark is an older one
    by: str = ""  # who asked: an operator's name, or "scheduler"


@dataclass(frozen=True, slots=True, kw_only=True)
class RollBackRound:
    """Take a round out of use; with `quarantine`, that slice of events is left out of every later build."""

    round: int
    reason: str
    quarantine: dict[str, str] | None = None
    by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreRound:
    """Undo a rollback: the round is good again, its quarantine slice is lifted."""

    round: int
    by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterConsumption:
    """A trainer's run `run_id` used the round (the training-consumption manifest)."""

    round: int
    run_id: str
    by: str = ""
    model_version: str = ""  # the model the run trained
    stage: str = ""  # the training stage that used the round (sft, dpo, kto, rm, ...)


@dataclass(frozen=True, slots=True, kw_only=True)
class PromoteRound:
    """Override a held round's verdict (an audited decision): it may become current."""

    round: int
    reason: str
    by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecutRound:
    """Build a new round at a round's watermark under the erasure list as it stands now; the old one is superseded."""

    round: int
    config: RoundConfig = field(default_factory=RoundConfig)
    by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeRound:
    """Delete a superseded or rolled-back round's data files; its manifest stays."""

    round: int
    by: str = ""
