"""SQLModel tables: the append-only event log, its tracking rows, and the read models projected from it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel


class EventRow(SQLModel, table=True):
    """The log. `position` is global and gap-free in commit order: appenders hold an exclusive table
    lock and number the events themselves (store.eventstore.append)."""

    __tablename__ = "events"

    position: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    event_id: UUID = Field(unique=True)
    type: str
    interaction_id: str | None = None
    app_id: str | None = None
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    recorded_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )
    data: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))


class TrackingRow(SQLModel, table=True):
    """Last offset whose effects are in the store, written in the same transaction as those effects."""

    __tablename__ = "tracking"

    consumer_group: str = Field(primary_key=True)
    topic: str = Field(primary_key=True)
    partition: int = Field(primary_key=True)
    offset: int = Field(sa_column=Column("offset", BigInteger, nullable=False))
    # The broker's id of the topic `offset` was read from: a topic created again under the same name is a new log.
    topic_id: str | None = Field(default=None, sa_column=Column(Text))
    # Newest occurred_at read on this partition: the event-time progress the parked sweep waits on.
    event_time: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    updated_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )


class CheckpointRow(SQLModel, table=True):
    """How far a log-following projection (e.g. signals) has got: the last position it has applied,
    updated in the same transaction as the projection's rows."""

    __tablename__ = "checkpoints"

    name: str = Field(primary_key=True)
    position: int = Field(sa_column=Column(BigInteger, nullable=False))


class DeadLetterRow(SQLModel, table=True):
    """A consumed message the store refused, with its reason; mirrors what went to the dead-letter topic."""

    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint("topic", "topic_id", "partition", "offset"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    reason: str = Field(index=True)
    detail: str
    topic: str
    topic_id: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))  # "" not known
    partition: int
    offset: int = Field(sa_column=Column("offset", BigInteger, nullable=False))
    key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    # The message's bytes, encrypted under `sealed_for`'s key when its user could be read (store.keys); NULL once
    # the retention has passed or the user is erased. The row stays, so counts still reconcile.
    original: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    sealed_for: str | None = Field(default=None, sa_column=Column(Text))
    dead_lettered_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )


class ParkedRow(SQLModel, table=True):
    """Valid feedback waiting for the interaction it refers to; released or dead-lettered after a grace period."""

    __tablename__ = "parked"

    event_id: UUID = Field(primary_key=True)
    topic: str
    topic_id: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    partition: int
    offset: int = Field(sa_column=Column("offset", BigInteger, nullable=False))
    key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    # Encrypted under the user's key (store.keys), as `data` is the event's log form; NULL after the retention.
    original: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    data: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    user_id_hash: str | None = Field(default=None, sa_column=Column(Text, index=True))
    waiting_for: list[str] = Field(sa_column=Column(ARRAY(Text), nullable=False))
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    parked_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )


class UserKeyRow(SQLModel, table=True):
    """Each user's data key (store.keys): NULL once the user is erased. Not a projection: no replay rebuilds it."""

    __tablename__ = "user_keys"

    user_id_hash: str = Field(primary_key=True)
    key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )
    erased_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class RederiveRow(SQLModel, table=True):
    """Prompt groups an erasure changed, for the signals projector to derive again once it passes `position`."""

    __tablename__ = "rederive"

    prompt_key: str = Field(primary_key=True)
    position: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))


# ---- read models: pure projections of the log, rebuilt identically by `flywheel replay` ----


class InteractionView(SQLModel, table=True):
    __tablename__ = "interactions"

    interaction_id: str = Field(primary_key=True)
    position: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    event_id: UUID
    app_id: str = Field(index=True)
    model_version: str = Field(index=True)
    prompt_version: str
    prompt_key: str = Field(index=True)  # hash of the conversation: the prompt group signals derive over
    user_id_hash: str = Field(index=True)  # an erasure finds a user's rows by it
    consent_training: bool
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    response: str
    sampling: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    tags: list[str] = Field(sa_column=Column(ARRAY(Text), nullable=False))
    thumbs_up: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    thumbs_down: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    edits: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    regenerations: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    ratings: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    comparisons: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    last_position: int = Field(sa_column=Column(BigInteger, nullable=False))
    tools: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSONB))  # offered to the model
    finish_reason: str | None = Field(default=None, sa_column=Column(Text))  # "length": cut at max_tokens


class FeedbackView(SQLModel, table=True):
    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_interaction", "interaction_id", "position"),)

    position: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    event_id: UUID
    type: str = Field(index=True)
    interaction_id: str
    app_id: str
    model_version: str
    prompt_version: str
    user_id_hash: str = Field(index=True)
    consent_training: bool
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))


class SignalView(SQLModel, table=True):
    """Preference pairs, KTO labels, SFT samples, hard-case candidates and disagreements of each prompt
    group; the whole record (with its lineage) is in `data`."""

    __tablename__ = "signals"
    # An erasure finds the records with one of a user's events among their sources through it. Without a pending
    # list (fastupdate), which every search would scan whole until a vacuum merges it.
    __table_args__ = (Index("ix_signals_sources", "sources", postgresql_using="gin",
                            postgresql_with={"fastupdate": "off"}),)

    prompt_key: str = Field(primary_key=True)
    signal_id: str = Field(primary_key=True)
    kind: str = Field(index=True)  # pair | kto | sft | hard_case | disagreement
    rule: str
    rule_version: int
    interaction_id: str | None = Field(default=None, index=True)
    app_id: str | None = None
    model_version: str | None = None
    prompt_version: str | None = None
    consent: bool
    disagreement: bool
    status: str | None = None
    # Where the record stands in its group's derivation (pairs, then KTO labels, SFT samples, hard cases,
    # disagreements, each in derive's order: flywheel.domain.signals.order_key), and the newest event it came from:
    # a round reads these rows in that order instead of deriving again (store.roundrows). A key, not an
    # index, so a record keeps it as its group grows and the projector rewrites only the rows that changed.
    sort_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    position: int = Field(sa_column=Column(BigInteger, nullable=False))
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # What a round build reads besides `data`, worked out once here rather than in Postgres on every build:
    # a training record's copy key (store.roundrows: what makes two records the same to the round gates up to
    # dedup), and a pair's tie, margin and answer lengths in characters (the report's length-bias audit).
    copy_key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    tie: bool | None = None
    margin: float | None = Field(default=None, sa_column=Column(Double))
    chosen_length: int | None = None
    rejected_length: int | None = None
    # The record's source events (its lineage's source_event_ids): what an erasure finds a user's records by.
    sources: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    # json, not jsonb: the record is kept as the projector wrote it, and a round reads most records whole, as
    # text (jsonb would be converted back on every read: 0.9 s of Postgres CPU per build at 300k events).
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class CandidateGroupView(SQLModel, table=True):
    """One generated candidate group (a CandidatesGenerated event) and, once made, its selection
    (the CandidatesSelected event about it): scores, the RSFT sample, the DPO pair, and why not."""

    __tablename__ = "candidate_groups"

    group_id: UUID = Field(primary_key=True)  # the CandidatesGenerated event's id
    position: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    sample_id: UUID | None = Field(default=None, index=True)  # the HardCasesSampled event it came from
    prompt_key: str = Field(index=True)
    model_version: str
    generator: str
    prompt: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    candidates: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    sampling: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    app_id: str | None = None  # of the hard case the prompt came from
    tags: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    selected_position: int | None = Field(default=None, sa_column=Column(BigInteger))
    selection: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))  # scores, sft, pair, reasons
    margin: float | None = None  # best - worst of the deciding score (the sampler's prior margin)


class RoundView(SQLModel, table=True):
    """Published rounds and what happened to them since (RoundPublished / RoundPromoted / RoundRolledBack /
    RoundRestored / RoundConsumed events). The `current` round is the newest promoted one not rolled back."""

    __tablename__ = "rounds"

    number: int = Field(primary_key=True)
    position: int = Field(sa_column=Column(BigInteger, nullable=False))
    path: str
    content_hash: str
    watermark: int = Field(sa_column=Column(BigInteger, nullable=False))
    parent: int | None = None
    quarantine_version: str
    summary: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))  # counts per kind and split
    rolled_back: bool = False
    rollback_reason: str | None = None
    rolled_back_position: int | None = Field(default=None, sa_column=Column(BigInteger))
    consumed_by: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    # promoted | held (RoundPublished, RoundPromoted); `current` is the newest promoted one not rolled back.
    state: str = Field(default="promoted", sa_column=Column(Text, nullable=False, server_default="promoted"))
    promotion: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(
        JSONB, nullable=False, server_default="[]"))  # the promotion gates' verdicts
    history: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(
        JSONB, nullable=False, server_default="[]"))  # {what, by, position, reason?} per event about the round
    consumptions: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(
        JSONB, nullable=False, server_default="[]"))  # {run_id, model_version, stage, by, position} per run


class QuarantineItemView(SQLModel, table=True):
    """Benchmark / eval items no round may contain (QuarantineItemsAdded events)."""

    __tablename__ = "quarantine_items"

    item_id: str = Field(primary_key=True)
    list_name: str = Field(index=True)
    prompt: str
    answer: str
    position: int = Field(sa_column=Column(BigInteger, nullable=False))


class QuarantineSliceView(SQLModel, table=True):
    """Slices of events excluded from every later build by a rollback (undone by a restore)."""

    __tablename__ = "quarantine_slices"

    round_number: int = Field(primary_key=True)
    position: int = Field(sa_column=Column(BigInteger, nullable=False))
    filters: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    reason: str
    active: bool = True


class NightlyRunView(SQLModel, table=True):
    """The nightly pipeline's runs, done or failed (NightlyRun events): `flywheel rounds list` shows them."""

    __tablename__ = "nightly_runs"

    run_id: str = Field(primary_key=True)
    position: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    finished_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    status: str  # ok | failed
    steps: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))  # what each step did, or why skipped
    error: str | None = None


class ScorerProbeView(SQLModel, table=True):
    """Each scorer's latest result on the bias-probe audit set (BiasProbesScored events): what a promotion gate
    reads to hold a round whose scorer is flagged."""

    __tablename__ = "scorer_probes"

    scorer: str = Field(primary_key=True)
    position: int = Field(sa_column=Column(BigInteger, nullable=False))
    run_id: str
    version: str
    probe_set: str
    accuracy: float = Field(sa_column=Column(Double, nullable=False))
    drift: float | None = Field(default=None, sa_column=Column(Double))
    min_accuracy: float = Field(sa_column=Column(Double, nullable=False))
    flagged: bool
    audit: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))  # sampling.probes.ProbeAudit


class ScorerAuditView(SQLModel, table=True):
    """Every audit of the scorers (UserPairsScored and BiasProbesScored events) by log position, so a report as of
    a watermark reads these few rows rather than scanning the log."""

    __tablename__ = "scorer_audits"

    position: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    type: str
    scorer: str | None = None  # a probe audit's scorer
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))


class ErasureView(SQLModel, table=True):
    """The erasure list: each user erased or with training consent withdrawn (erasure and consent events). Every
    round build applies all of it, whatever its watermark."""

    __tablename__ = "erasures"

    user_id_hash: str = Field(primary_key=True)
    erased: bool = False
    erased_position: int | None = Field(default=None, sa_column=Column(BigInteger))
    reason: str | None = None
    withdrawn: bool = False  # training consent withdrawn (scope training)
    position: int = Field(sa_column=Column(BigInteger, nullable=False))  # the newest event about the user


READ_MODELS = ("interactions", "feedback", "signals", "candidate_groups", "rounds", "quarantine_items",
               "quarantine_slices", "nightly_runs", "scorer_probes", "scorer_audits", "erasures")


class TextEmbeddingRow(SQLModel, table=True):
    """The embedding of each distinct text (flywheel.domain.rounds.semantic.text_key) under each model: what the
    semantic contamination check compares. Not a read model of the log (no replay makes it): a cache of a pure
    function of the text, kept so a build compares vectors and never runs the model."""

    __tablename__ = "text_embeddings"

    model: str = Field(sa_column=Column(Text, primary_key=True))
    text_key: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # float32, unit length, little-endian
    # In the order kept: a comparison with a quarantine list resumes after the last it compared.
    seq: int = Field(sa_column=Column(BigInteger, Identity(), nullable=False, unique=True))


class SemanticComparedRow(SQLModel, table=True):
    """How far the kept embeddings of a model have been compared with one quarantine list at one threshold
    (`checked`: flywheel.domain.rounds.semantic.comparison_id), and the texts that came out above it: a build
    compares only what was kept since."""

    __tablename__ = "semantic_compared"

    model: str = Field(sa_column=Column(Text, primary_key=True))
    checked: str = Field(sa_column=Column(Text, primary_key=True))
    upto: int = Field(sa_column=Column(BigInteger, nullable=False))  # the last text_embeddings.seq compared


class SemanticMatchRow(SQLModel, table=True):
    """A kept text over the threshold of a comparison (SemanticComparedRow) with the item sides it is close to."""

    __tablename__ = "semantic_matches"

    model: str = Field(sa_column=Column(Text, primary_key=True))
    checked: str = Field(sa_column=Column(Text, primary_key=True))
    text_key: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    matches: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))  # {item, side, score} each
