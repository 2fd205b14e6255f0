"""Runtime settings, read once at start-up from FLYWHEEL_* variables and passed down."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.domain.signals import SignalConfig

if TYPE_CHECKING:
    from flywheel.domain.rounds import RoundConfig

PREFIX = "FLYWHEEL_"

# The FLYWHEEL_* variables Flywheel reads outside Settings, with who reads them. Every other FLYWHEEL_* variable
# in the environment must be a setting: a typo is refused at start-up instead of passing silently.
READ_ELSEWHERE: dict[str, str] = {
    "FLYWHEEL_IMAGE": "Compose's interpolation variable for the image name (docker-compose.yml), not a process's",
}

# Names older Compose files used: the hint names the setting that replaced them.
RENAMED = {"FLYWHEEL_VLLM_URL": "FLYWHEEL_GENERATOR_URL", "FLYWHEEL_VLLM_MODEL": "FLYWHEEL_GENERATOR_MODEL"}


class UnknownSetting(ValueError):
    """A FLYWHEEL_* environment variable that is neither a setting nor read elsewhere (READ_ELSEWHERE)."""


def setting_names() -> set[str]:
    """Every FLYWHEEL_* variable a Settings field is read from."""
    return {PREFIX + name.upper() for name in Settings.model_fields}


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a FLYWHEEL_* variable that nothing reads, naming it and the nearest known name."""
    known = setting_names() | set(READ_ELSEWHERE)
    unknown = sorted(k for k in environ if k.upper().startswith(PREFIX) and k.upper() not in known)
    if not unknown:
        return
    lines = []
    for name in unknown:
        near = [RENAMED[name.upper()]] if name.upper() in RENAMED else difflib.get_close_matches(
            name.upper(), sorted(known), n=1, cutoff=0.6)
        lines.append(f"{name}" + (f" (did you mean {near[0]}?)" if near else ""))
    raise UnknownSetting(f"unknown environment variable{'s' if len(unknown) > 1 else ''}: {'; '.join(lines)}. "
                         "Every FLYWHEEL_* variable must be a setting (flywheel/settings.py)")


def default_home() -> Path:
    # Project-local like .venv: a home directory is often private (mode 700), and the embedded
    # PostgreSQL must run as an unprivileged user who can reach its data directory.
    return Path.cwd() / ".flywheel"


class Settings(BaseSettings):
    """Everything a process needs; empty URLs mean "use the embedded local stack"."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    database_url: str = ""
    kafka_bootstrap: str = ""

    feedback_topic: str = "flywheel.feedback"
    deadletter_topic: str = "flywheel.deadletter"
    rounds_topic: str = "flywheel.rounds"
    generation_topic: str = "flywheel.generation"  # requests for generation workers (flywheel generate --via-kafka)
    generation_group: str = "flywheel-generation"
    generation_batch: int = 32  # requests per engine call
    partitions: int = 4  # of the feedback and generation topics
    deadletter_partitions: int = Field(default=1, gt=0)
    # Announcements carry no key: on more than one partition a reader may see them out of order.
    rounds_partitions: int = Field(default=1, gt=0)
    # Of every topic Flywheel creates: 1 fits a single broker (the local stack, the Compose file); 3 is usual on a
    # production cluster.
    replication_factor: int = Field(default=1, gt=0)
    consumer_group: str = "flywheel-ingest"

    batch_size: int = 2000
    batch_timeout: float = 0.25
    max_event_bytes: int = 256 * 1024
    # Feedback whose interaction has not arrived is parked this long (in event time) before it is dead-lettered.
    grace_seconds: float = 300.0
    # A worker with nothing to read for this long is caught up (see store.ingest.expire_parked).
    idle_seconds: float = 60.0
    sweep_interval: float = 5.0
    # Dead letters and parked messages keep their original bytes (encrypted under the user's key when the user can
    # be read) this long; then the bytes are nulled and the rows kept, so counts still reconcile.
    raw_retention_days: float = Field(default=14.0, ge=0)
    # On Ctrl-C, `flywheel up` lets its worker read what the broker still holds for at most this long (the local
    # broker keeps messages in memory only: what is left unread when it stops is gone).
    drain_seconds: float = Field(default=10.0, ge=0)
    # The signals projector runs this often and takes everything committed since its last run (at most
    # signals_max_events): a longer interval derives each hot prompt group less often, signals lag more.
    # The signal rules' thresholds, margins and confidences (FLYWHEEL_SIGNALS, JSON: {"edit_min_distance": 0.2}).
    # The signals read model is derived with them: after a change, `flywheel replay` derives it anew.
    signals: SignalConfig = Field(default_factory=SignalConfig)
    # Promotion gates' limits and which of them block (FLYWHEEL_PROMOTION, JSON: {"min_sft_rows": 500}; unset: the
    # defaults in flywheel/domain/rounds/promotion.py). Part of every round build's config and config_version.
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    # Who round events (build, promote, rollback, restore, consume, quarantine) say did it, when a command is not
    # given --by; unset: the OS user.
    operator: str = ""
    signals_interval: float = Field(default=1.0, gt=0)
    signals_max_events: int = Field(default=50_000, gt=0)
    # Of a core (the projector has a process of its own): a long run delays the next accordingly.
    signals_max_share: float = Field(default=0.25, gt=0, le=1)
    # Interactions and feedback the projector keeps in memory between runs, so a hot prompt group is not read
    # and rewritten whole on every run (roughly 1-2 KB each).
    signals_cache_records: int = Field(default=100_000, ge=0)
    # Nothing appended for this long: ingest has gone quiet, and what is left is derived without waiting.
    signals_quiet: float = Field(default=0.25, gt=0)
    # Short sessions make group joins fast on the local broker; production brokers can use more.
    kafka_session_timeout: float = 6.0
    # Prometheus metrics, one port per process kind so that they can share a host (0: none).
    metrics_port: int = 0  # the ingest worker
    generation_metrics_port: int = 0  # a generation worker
    scheduler_metrics_port: int = 0  # the scheduler
    # Generation: a local model directory for in-process vLLM, or the URL of an OpenAI-compatible vLLM server.
    generator_model: str = ""
    generator_url: str = ""
    generator_model_version: str = "local"
    reward_model: str = ""  # a sequence-classification model directory for the reward-model scorer
    # The LLM judge, a model of its own: a local model directory for in-process vLLM, or the name a vLLM
    # OpenAI-compatible server at judge_url serves it under. It grades under the rubric in the judge_rubric file.
    judge_model: str = ""
    judge_url: str = ""
    judge_model_version: str = ""  # default: a content hash of the local model directory, else the served name
    judge_rubric: str = ""  # a text file; with it and a judge model, `select` and the nightly run grade with the judge
    # A judge that is the policy grading its own candidates favours them: refused unless this is set.
    judge_may_be_policy: bool = False
    # The longest rationale a judge may give; its reply is held to a format whose length this bounds, so a
    # reply always fits in its token budget (rationale + 32 tokens).
    judge_rationale_chars: int = Field(default=300, ge=0)
    # Selection (`select` and the nightly run; select's options override): a checks file (sampling/adapters/checks.py),
    # the deciding scorer (needed when scorers on several scales judge a group), and the thresholds on its scale.
    select_checks: str = ""
    select_decide_by: str = ""
    select_sft_threshold: float = 0.8
    select_min_margin: float = Field(default=0.2, ge=0)
    # Each selection run has its judge and reward model score the users' pairs about its hard cases and the
    # bias-probe audit set (sampling/data/bias_probes.jsonl); a scorer below this accuracy on it is flagged.
    scorer_audit: bool = True
    probe_min_accuracy: float = Field(default=0.8, ge=0, le=1)
    audit_cron: str = "30 2 * * *"
    rounds_dir: str = ""
    nightly_cron: str = "0 3 * * *"
    nightly_steps: str = "sample,generate,select,build"  # drop a step to skip it
    nightly_budget: int = 200  # hard cases sampled per night

    @model_validator(mode="before")
    @classmethod
    def _known_environment(cls, values: Any) -> Any:
        check_environment(os.environ)
        return values

    def round_config(self) -> RoundConfig:
        """The config a round build uses: the default one with the configured promotion gates."""
        from flywheel.domain.rounds import RoundConfig

        return RoundConfig(promotion=self.promotion)

    def child_env(self) -> dict[str, str]:
        """This process's environment with the FLYWHEEL_* variables that reproduce these settings in a child."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
        env.update({f"FLYWHEEL_{field.upper()}": json.dumps(value) if isinstance(value, dict) else str(value)
                    for field, value in self.model_dump(mode="json").items()})
        return env

    @property
    def stack_dir(self) -> Path:
        return self.home / "stack"

    @property
    def rounds_root(self) -> Path:
        """Where round directories and the `current` pointer live (FLYWHEEL_ROUNDS_DIR, default home/rounds)."""
        return Path(self.rounds_dir) if self.rounds_dir else self.home / "rounds"


@dataclass(frozen=True)
class Endpoints:
    """Where Postgres and Kafka are (flywheel.bootstrap.resolve: the settings' URLs, else the local stack's)."""

    database_url: str
    kafka_bootstrap: str
    embedded: bool = False
