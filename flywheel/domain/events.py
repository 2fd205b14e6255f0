"""The facts Flywheel records itself, as typed events: rounds, quarantine, samples, candidates, tracking.

Each is named in the past tense and knows its type string, its payload in the log and its event id. The id is
a UUIDv5 of what the event says, so recording the same fact twice is a no-op (the log is idempotent on ids).
Feedback from apps is not here: that is the wire schema (flywheel.domain.wire).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

if TYPE_CHECKING:
    from sampling.hardcases import SampledHardCases, SamplerConfig

_ROUNDS = uuid.UUID("9a1d3c55-0b7e-4c62-8f0a-3e5d2b7c6a14")
_CANDIDATES = uuid.UUID("0c6f2b8e-8d1b-4f4e-a7d5-2f0d7b9e4c31")
_SAMPLES = uuid.UUID("5b0e7c1e-3d7f-4a43-9d8e-6b1f4f1c2a90")
_TRACKING = uuid.UUID("5f0c2a0e-7d43-4b8e-9a51-1c6e3f2b8d70")
_AUDITS = uuid.UUID("3d8b6e2a-41c7-4f09-b5e3-7a2c9d1f6e48")


class InternalEvent:
    """An event the system records itself. Subclasses are frozen, keyword-only dataclasses."""

    __slots__ = ()
    TYPE: ClassVar[str]
    NAMESPACE: ClassVar[uuid.UUID]

    def identity(self) -> str:
        """What names this fact among all of its type."""
        raise NotImplementedError

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(self.NAMESPACE, f"{self.TYPE}:{self.identity()}"))

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def fields(self) -> dict[str, Any]:
        """Fields of the log entry beside the payload (what the read models are keyed by)."""
        return {}


# ---- rounds and the quarantine list ----

def _by(by: str) -> dict[str, str]:
    """Who did it, in a payload; left out when unknown, so events recorded before it was kept read the same."""
    return {"by": by} if by else {}


def quarantine_item_id(prompt: str, answer: str) -> str:
    return hashlib.sha256(orjson.dumps([prompt, answer])).hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineItem:
    item_id: str
    prompt: str
    answer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineItemsAdded(InternalEvent):
    TYPE: ClassVar[str] = "quarantine_items_added"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    list_name: str
    items: tuple[QuarantineItem, ...]  # sorted by item_id, each once
    by: str = ""  # who added them ("" in events recorded before it was kept)

    def identity(self) -> str:
        return f"{self.list_name}:{[i.item_id for i in self.items]}"

    def payload(self) -> dict[str, Any]:
        return {"list_name": self.list_name, **_by(self.by),
                "items": [{"item_id": i.item_id, "prompt": i.prompt, "answer": i.answer} for i in self.items]}

    @classmethod
    def listing(cls, list_name: str, pairs: Sequence[tuple[str, str]], *, by: str = "") -> QuarantineItemsAdded:
        """The (prompt, answer) pairs added to a named list, each once, in item id order."""
        rows = sorted({(quarantine_item_id(p, a), p, a) for p, a in pairs})
        return cls(list_name=list_name, by=by,
                   items=tuple(QuarantineItem(item_id=i, prompt=p, answer=a) for i, p, a in rows))

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> QuarantineItemsAdded:
        return cls(list_name=payload["list_name"], by=payload.get("by", ""), items=tuple(
            QuarantineItem(item_id=i["item_id"], prompt=i["prompt"], answer=i["answer"]) for i in payload["items"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPublished(InternalEvent):
    TYPE: ClassVar[str] = "round_published"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    round: int
    path: str
    content_hash: str
    watermark: int
    parent: int | None
    quarantine_version: str
    config_version: str
    summary: dict[str, Any] = field(hash=False)
    # promoted (may become current) or held (a blocking promotion gate failed, or a rollback landed during the
    # build); events recorded before promotion gates existed are promoted.
    state: str = "promoted"
    promotion: list[dict[str, Any]] = field(default_factory=list, hash=False)  # GateVerdict.as_dict() each
    held_because: list[str] = field(default_factory=list, hash=False)
    by: str = ""

    def identity(self) -> str:
        return f"{self.round}:{self.content_hash}"

    def payload(self) -> dict[str, Any]:
        return {"round": self.round, "path": self.path, "content_hash": self.content_hash,
                "watermark": self.watermark, "parent": self.parent, "quarantine_version": self.quarantine_version,
                "config_version": self.config_version, "summary": self.summary, "state": self.state,
                "promotion": self.promotion, "held_because": self.held_because, **_by(self.by)}

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> RoundPublished:
        return cls(round=payload["round"], path=payload["path"], content_hash=payload["content_hash"],
                   watermark=payload["watermark"], parent=payload["parent"],
                   quarantine_version=payload["quarantine_version"],
                   config_version=payload.get("config_version", ""), summary=payload["summary"],
                   state=payload.get("state", "promoted"), promotion=payload.get("promotion", []),
                   held_because=payload.get("held_because", []), by=payload.get("by", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPromoted(InternalEvent):
    """On-call overrode a held round's verdict: it may become current."""

    TYPE: ClassVar[str] = "round_promoted"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    round: int
    reason: str
    by: str
    after: int  # the log position this decision was made at

    def identity(self) -> str:
        return f"{self.round}:{self.after}"

    def payload(self) -> dict[str, Any]:
        return {"round": self.round, "reason": self.reason, "by": self.by}


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRolledBack(InternalEvent):
    TYPE: ClassVar[str] = "round_rolled_back"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    round: int
    reason: str
    quarantine: dict[str, str] | None = field(default=None, hash=False)  # the slice later builds leave out
    after: int  # the log position this decision was made at: a rollback after a restore is a new fact
    by: str = ""

    def identity(self) -> str:
        return f"{self.round}:{self.after}"

    def payload(self) -> dict[str, Any]:
        return {"round": self.round, "reason": self.reason, "quarantine": self.quarantine, **_by(self.by)}

    @classmethod
    def of(cls, payload: Mapping[str, Any], *, after: int = 0) -> RoundRolledBack:
        return cls(round=payload["round"], reason=payload["reason"], quarantine=payload["quarantine"], after=after,
                   by=payload.get("by", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRestored(InternalEvent):
    TYPE: ClassVar[str] = "round_restored"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    round: int
    after: int
    by: str = ""

    def identity(self) -> str:
        return f"{self.round}:{self.after}"

    def payload(self) -> dict[str, Any]:
        return {"round": self.round, **_by(self.by)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundConsumed(InternalEvent):
    """A trainer registered that its run used the round (the training-consumption manifest)."""

    TYPE: ClassVar[str] = "round_consumed"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    round: int
    run_id: str
    by: str = ""
    model_version: str = ""  # the model the run trained ("": not said)
    stage: str = ""  # the training stage that used it: sft, dpo, kto, rm, ... ("": not said)

    def identity(self) -> str:
        return f"{self.round}:{self.run_id}"

    def payload(self) -> dict[str, Any]:
        return {"round": self.round, "run_id": self.run_id, **_by(self.by),
                **({"model_version": self.model_version} if self.model_version else {}),
                **({"stage": self.stage} if self.stage else {})}

    def record(self) -> dict[str, Any]:
        """What the training-consumption manifest says of this run."""
        return {"run_id": self.run_id, "model_version": self.model_version or None, "stage": self.stage or None,
                "by": self.by or None}

    def describe(self) -> str:
        """The round's history entry: which run, training which model at which stage."""
        what = [f"model {self.model_version}"] if self.model_version else []
        what += [f"stage {self.stage}"] if self.stage else []
        return f"consumed by run {self.run_id}" + (f" ({', '.join(what)})" if what else "")

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> RoundConsumed:
        return cls(round=payload["round"], run_id=payload["run_id"], by=payload.get("by", ""),
                   model_version=payload.get("model_version", ""), stage=payload.get("stage", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class NightlyRunFinished(InternalEvent):
    """One run of the nightly pipeline, done ("ok") or "failed" (with the error): its history for on-call."""

    TYPE: ClassVar[str] = "nightly_run"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    run_id: str
    started_at: str
    status: str
    steps: dict[str, Any] = field(hash=False)
    error: str | None

    def identity(self) -> str:
        return self.run_id

    def payload(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started_at": self.started_at, "status": self.status, "steps": self.steps,
                "error": self.error}


@dataclass(frozen=True, slots=True, kw_only=True)
class NightClaimed(InternalEvent):
    """A scheduler instance took the nightly run of `night` (the cron's fire time it belongs to). Its id is the
    night's, so the log takes one claim per night: an instance whose claim is a no-op leaves the night alone."""

    TYPE: ClassVar[str] = "night_claimed"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    night: str
    run_id: str

    def identity(self) -> str:
        return self.night

    def payload(self) -> dict[str, Any]:
        return {"night": self.night, "run_id": self.run_id}


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundSuperseded(InternalEvent):
    """A round re-cut at its watermark under the erasure list as it stood (`rounds recut`): `by_round` replaces it,
    and it never is current again."""

    TYPE: ClassVar[str] = "round_superseded"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    round: int
    by_round: int
    erasure_version: str
    by: str = ""

    def identity(self) -> str:
        return f"{self.round}"

    def payload(self) -> dict[str, Any]:
        return {"round": self.round, "by_round": self.by_round, "erasure_version": self.erasure_version,
                **_by(self.by)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPurged(InternalEvent):
    """A round's data files deleted (`rounds purge`); its manifest and report stay."""

    TYPE: ClassVar[str] = "round_purged"
    NAMESPACE: ClassVar[uuid.UUID] = _ROUNDS
    round: int
    files: int
    by: str = ""

    def identity(self) -> str:
        return f"{self.round}"

    def payload(self) -> dict[str, Any]:
        return {"round": self.round, "files": self.files, **_by(self.by)}


ROUND_EVENTS: tuple[type[InternalEvent], ...] = (
    QuarantineItemsAdded, RoundPublished, RoundPromoted, RoundRolledBack, RoundRestored, RoundConsumed,
    NightlyRunFinished, RoundSuperseded, RoundPurged)


# ---- the hard-case loop ----

@dataclass(frozen=True, slots=True, kw_only=True)
class HardCasesSampled(InternalEvent):
    """The hard cases the sampler chose at a watermark; `chosen` carries each case's conversation."""

    TYPE: ClassVar[str] = "hard_cases_sampled"
    NAMESPACE: ClassVar[uuid.UUID] = _SAMPLES
    watermark: int
    seed: int
    config: dict[str, Any] = field(hash=False)
    config_version: str
    clusters: int
    excluded: dict[str, int] = field(hash=False)
    chosen: Sequence[dict[str, Any]] = field(hash=False)
    quarantine_version: str = ""  # the quarantine list it left out ("": an empty one)

    def identity(self) -> str:
        # The same config, seed, watermark and quarantine list name the same sample.
        base = f"{self.config_version}:{self.seed}:{self.watermark}"
        return f"{base}:{self.quarantine_version}" if self.quarantine_version else base

    @classmethod
    def of_result(cls, result: SampledHardCases, config: SamplerConfig,
                  prompts: Mapping[str, Sequence[Mapping[str, Any]]], *,
                  quarantine_version: str = "") -> HardCasesSampled:
        """The sampler's result, each chosen case with its conversation (`prompts` by prompt key)."""
        return cls(watermark=result.watermark, seed=result.seed, config=asdict(config),
                   config_version=result.config_version, clusters=result.clusters, excluded=result.excluded_counts,
                   chosen=[{**asdict(c), "messages": prompts[c.prompt_key]} for c in result.chosen],
                   quarantine_version=quarantine_version)

    def cases(self) -> list[tuple[int, dict[str, Any]]]:
        """(rank, case) of each chosen case that still has its conversation: a case whose user was erased since
        it was chosen reads without one, and is not generated for."""
        return [(rank, case) for rank, case in enumerate(self.chosen) if "messages" in case]

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> HardCasesSampled:
        return cls(watermark=payload["watermark"], seed=payload["seed"], config=payload["config"],
                   config_version=payload["config_version"], clusters=payload["clusters"],
                   excluded=payload["excluded"], chosen=payload["chosen"],
                   quarantine_version=payload.get("quarantine_version", ""))

    def payload(self) -> dict[str, Any]:
        return {"watermark": self.watermark, "seed": self.seed, "config": self.config,
                "config_version": self.config_version, "clusters": self.clusters, "excluded": self.excluded,
                "chosen": list(self.chosen),
                **({"quarantine_version": self.quarantine_version} if self.quarantine_version else {})}


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidatesGenerated(InternalEvent):
    """One candidate group for a sampled hard case; `group`: sampling.generation.CandidateGroup.to_event_payload().
    Generating the same prompt of the same sample with the same model and sampling names the same group, so
    re-running generation after a crash appends only what is missing."""

    TYPE: ClassVar[str] = "candidates_generated"
    NAMESPACE: ClassVar[uuid.UUID] = _CANDIDATES
    sample_id: str
    prompt_key: str
    app_id: str | None
    tags: tuple[str, ...]
    group: dict[str, Any] = field(hash=False)

    def identity(self) -> str:
        what = orjson.dumps([self.group["model_version"], self.group["generator"], self.group["sampling"]],
                            option=orjson.OPT_SORT_KEYS).decode()
        return f"{self.sample_id}:{self.prompt_key}:{what}"

    def payload(self) -> dict[str, Any]:
        return self.group

    def fields(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "prompt_key": self.prompt_key, "app_id": self.app_id,
                "tags": list(self.tags)}

    @classmethod
    def for_case(cls, sample_id: str, case: Mapping[str, Any], group: dict[str, Any]) -> CandidatesGenerated:
        """The group generated for one sampled hard case (its prompt_key, app_id, tags)."""
        return cls(sample_id=sample_id, prompt_key=case["prompt_key"], app_id=case.get("app_id"),
                   tags=tuple(case.get("tags") or ()), group=group)


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidatesSelected(InternalEvent):
    """The scores and selection of one group, named by the group and the scorers/config that judged it."""

    TYPE: ClassVar[str] = "candidates_selected"
    NAMESPACE: ClassVar[uuid.UUID] = _CANDIDATES
    group_id: str
    selector_version: str
    selection: dict[str, Any] = field(hash=False)

    def identity(self) -> str:
        return f"{self.group_id}:{self.selector_version}"

    def payload(self) -> dict[str, Any]:
        return self.selection

    def fields(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "selector_version": self.selector_version}


# ---- audits of the scorers ----

@dataclass(frozen=True, slots=True, kw_only=True)
class UserPairsScored(InternalEvent):
    """The users' preference pairs about a selection run's hard cases, each side scored by the run's judge and
    reward model, so users and machines judge common items (flywheel.domain.pairwise reads them).

    Each pair: pair_id, prompt_key, rule, app_id, model_version, tie, chosen_first (the chosen text is the first
    side in flywheel.domain.pairwise.orient's order) and scores {scorer: [first side's value, second's]}, a value
    null where the scorer gave no score. `scorers` names each scorer with its version."""

    TYPE: ClassVar[str] = "user_pairs_scored"
    NAMESPACE: ClassVar[uuid.UUID] = _AUDITS
    run_id: str
    scorers: tuple[str, ...]
    pairs: Sequence[dict[str, Any]] = field(hash=False)

    def identity(self) -> str:
        return self.run_id

    def payload(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "scorers": list(self.scorers), "pairs": list(self.pairs)}

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> UserPairsScored:
        return cls(run_id=payload["run_id"], scorers=tuple(payload["scorers"]), pairs=payload["pairs"])


@dataclass(frozen=True, slots=True, kw_only=True)
class BiasProbesScored(InternalEvent):
    """One scorer's result on the bias-probe audit set in a selection run (`audit`: sampling.probes.ProbeAudit as
    a dict): accuracy, by category, drift from its previous run, and whether it is flagged."""

    TYPE: ClassVar[str] = "bias_probes_scored"
    NAMESPACE: ClassVar[uuid.UUID] = _AUDITS
    run_id: str
    audit: dict[str, Any] = field(hash=False)

    def identity(self) -> str:
        return f"{self.run_id}:{self.audit['scorer']}:{self.audit['version']}"

    def payload(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "audit": self.audit}

    def fields(self) -> dict[str, Any]:
        return {"scorer": self.audit["scorer"]}

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> BiasProbesScored:
        return cls(run_id=payload["run_id"], audit=payload["audit"])


# ---- ingest ----

TOPIC_RECREATED = "topic_recreated"  # the worker found a new topic id under a tracked topic's name
OPERATOR = "operator"  # `flywheel tracking reset`


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackingReset(InternalEvent):
    """A tracking row moved by a decision rather than by ingest, from `previous_offset` to `offset` (-1: read
    from the start). A recreated topic's reset is named after the two topic ids, so a batch retried after a
    crash records it once; an operator's reset is named by the caller (`key`), so each one is recorded."""

    TYPE: ClassVar[str] = "tracking_reset"
    NAMESPACE: ClassVar[uuid.UUID] = _TRACKING
    consumer_group: str
    topic: str
    partition: int
    previous_offset: int
    offset: int
    reason: str
    by: str
    topic_id: str | None
    previous_topic_id: str | None = None
    note: str = ""
    key: str | None = None

    def identity(self) -> str:
        return self.key or f"{self.consumer_group}:{self.topic}:{self.partition}:{self.previous_topic_id}:" \
                           f"{self.topic_id}"

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(self.NAMESPACE, self.identity()))  # named without the type, as it always was

    def payload(self) -> dict[str, Any]:
        return {"consumer_group": self.consumer_group, "topic": self.topic, "partition": self.partition,
                "previous_offset": self.previous_offset, "offset": self.offset, "reason": self.reason,
                "by": self.by, "topic_id": self.topic_id, "previous_topic_id": self.previous_topic_id,
                "note": self.note}


# ---- the rights of the users whose data it is ----

_PRIVACY = uuid.UUID("8e2f4a6c-1b3d-4e5f-9a7b-0c2d4e6f8a1b")
SCOPE_TRAINING = "training"


@dataclass(frozen=True, slots=True, kw_only=True)
class UserErased(InternalEvent):
    """A user's erasure (`flywheel erase`, or an app's `erasure` event of the same form): their data key is gone,
    their events read as erased, and no later round holds their rows. Erasing a user twice names the same event."""

    TYPE: ClassVar[str] = "erasure"
    NAMESPACE: ClassVar[uuid.UUID] = _PRIVACY
    user_id_hash: str
    reason: str
    by: str = ""
    # Rounds published by then that held the user's rows: round number (as text) -> rows (training records and
    # candidate groups at or before its watermark). Counts only: what `rounds list` flags.
    exposure: dict[str, int] = field(default_factory=dict, hash=False)
    # The prompt groups of the user's interactions: their candidate groups leave the read model with this event.
    prompt_keys: tuple[str, ...] = field(default=(), hash=False)

    def identity(self) -> str:
        return self.user_id_hash

    def fields(self) -> dict[str, Any]:
        return {"user": {"id_hash": self.user_id_hash}, "exposure": self.exposure,
                "prompt_keys": list(self.prompt_keys)}

    def payload(self) -> dict[str, Any]:
        return {"reason": self.reason, **_by(self.by)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentChanged(InternalEvent):
    """A user's consent for `scope` withdrawn or granted again (`flywheel consent`). While withdrawn, none of their
    data, past or future, is used for training, sampling or generation; the data itself is kept. `change` counts the
    user's consent events before this one, so a repeated command names the same event."""

    TYPE: ClassVar[str] = "consent"
    NAMESPACE: ClassVar[uuid.UUID] = _PRIVACY
    user_id_hash: str
    granted: bool
    change: int
    scope: str = SCOPE_TRAINING
    by: str = ""
    exposure: dict[str, int] = field(default_factory=dict, hash=False)  # as UserErased's, on a withdrawal

    def identity(self) -> str:
        return f"{self.user_id_hash}:{self.scope}:{self.change}"

    def fields(self) -> dict[str, Any]:
        return {"user": {"id_hash": self.user_id_hash}, "exposure": self.exposure}

    def payload(self) -> dict[str, Any]:
        return {"scope": self.scope, "granted": self.granted, "change": self.change, **_by(self.by)}


PRIVACY_EVENT_TYPES = frozenset({UserErased.TYPE, ConsentChanged.TYPE})
