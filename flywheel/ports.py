"""The interfaces the services need. Adapters implement them (store/, streams/, sampling/adapters/,
flywheel/runtime/); flywheel.bootstrap wires them; tests swap in the in-memory ones (store.memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from flywheel.domain.events import HardCasesSampled, InternalEvent
from flywheel.domain.log import StoredEvent
from flywheel.domain.quality import Judgement
from flywheel.domain.rounds import Entry, QuarantineList, RoundConfig, RoundResult
from flywheel.domain.signals import SignalConfig

if TYPE_CHECKING:
    import numpy as np

    from flywheel.domain.rounds.semantic import SemanticHits
    from sampling.hardcases import PromptCandidate


Progress = Callable[[int], None]  # told how many items a long use case just finished


class BuilderBusy(RuntimeError):
    """Another instance is building (or changing) rounds right now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundState:
    """A published round as the rounds read model has it."""

    number: int
    position: int
    path: str
    content_hash: str
    watermark: int
    parent: int | None
    quarantine_version: str
    summary: dict[str, Any]
    rolled_back: bool
    rollback_reason: str | None
    consumed_by: tuple[str, ...]
    state: str = "promoted"  # or held: only a promoted round that is not rolled back may be current
    promotion: tuple[dict[str, Any], ...] = ()  # its promotion gates' verdicts
    history: tuple[dict[str, Any], ...] = ()  # what happened to it, by whom: {"what", "by", "position", ...}
    rolled_back_position: int | None = None  # the rollback's log position while rolled back
    # the training runs that used it, oldest first: {run_id, model_version, stage, by, position}
    consumptions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Erasures:
    """The erasure list as it stands, which every build applies whatever its watermark: its content-named
    `version`, how many users are erased and withdrawn, and what a build leaves out for it: the log events of
    withdrawn users (a record with any of them as a source goes) and the prompt groups of their interactions (no
    candidate group of them). Erased users' rows have already left the read models (store.erase)."""

    version: str = ""
    erased_users: int = 0
    withdrawn_users: int = 0
    events: frozenset[str] = frozenset()
    prompt_keys: frozenset[str] = frozenset()

    def excludes(self, kind: str, data: dict[str, Any]) -> bool:
        if kind == "group":
            return data.get("prompt_key") in self.prompt_keys
        return not self.events.isdisjoint(data.get("source_event_ids", ()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Quarantine:
    """The quarantine list as it stands: its content-named version, its items and the active rollback slices."""

    version: str
    items: QuarantineList
    slices: list[dict[str, Any]]
    erasures: Erasures = field(default_factory=Erasures)


class InteractionFacts(NamedTuple):
    """An interaction as a rollback slice sees it (flywheel.domain.rounds.rollback.in_slice)."""

    interaction_id: str
    occurred_at: datetime
    app_id: str
    model_version: str
    prompt_version: str


class SourceRow(NamedTuple):  # a tuple: one is made per row read, and a frozen dataclass takes 5x as long
    """One record a round build reads (RoundSnapshot.rows)."""

    kind: str  # pair | kto | sft (signal records) | group (a candidate group with its selection)
    # The record as JSON (flywheel.domain.signals dataclasses), or the candidate group; None for an exact copy (see
    # `copy_key`) of an earlier row, which the read leaves unread.
    data: dict[str, Any] | None
    position: int  # the newest event the row was derived from
    # That event's time, which rollback slices select on; None with `copies`, which rows come with only when no
    # slice may leave any out.
    occurred_at: datetime | None
    # With `copies`, what an exact copy shares with the first row of its kind (which comes with data; the
    # copies with None): the same kind, consent, status and tags and the same body, so row_from_signal makes
    # the same of it, every gate up to dedup treats it as that row, and dedup then removes it.
    copy_key: bytes | None = None
    # False for a training record without the user's consent, which (with `copies`) comes unread: the consent gate
    # removes it whatever its data says, so it is not worth decoding.
    consent: bool = True


class EventLog(Protocol):
    """The log inside one unit of work: what is recorded is projected into the read models in the same
    transaction, and both commit (or roll back) together."""

    async def head(self) -> int:
        """The newest position in the log (0 when empty)."""
        ...

    async def record(self, events: Sequence[InternalEvent]) -> list[StoredEvent]:
        """Append and project; returns the events that were new (an event id seen before is a no-op)."""
        ...


class Publication(EventLog, Protocol):
    """The unit of work that publishes a build, under the rounds lock (so no rollback lands meanwhile)."""

    async def rolled_back_since(self, position: int) -> list[int]:
        """Rounds rolled back by events after `position` (and not restored since)."""
        ...

    async def current(self) -> RoundState | None:
        """The newest promoted round that is not rolled back, as committed so far."""
        ...


class RoundsChange(EventLog, Protocol):
    """One change of the rounds, under the rounds lock: nothing else builds, rolls back or restores meanwhile."""

    async def find(self, number: int) -> RoundState | None: ...

    async def current(self) -> RoundState | None:
        """The newest promoted round that is not rolled back: what trainers should use."""
        ...


class Rounds(Protocol):
    def change(self, *, lock: bool = True) -> AbstractAsyncContextManager[RoundsChange]:
        """A unit of work, under the rounds lock (waited for) unless `lock` is False."""
        ...


class RoundSnapshot(Protocol):
    """The log and read models as one consistent snapshot, which a build reads its round from."""

    async def head(self) -> int: ...

    async def signals_checkpoint(self) -> int:
        """How far the signals read model is derived."""
        ...

    async def next_number(self) -> int: ...

    async def current(self) -> RoundState | None: ...

    async def quarantine(self) -> Quarantine: ...

    def rows(self, watermark: int, signals: SignalConfig | None, *, copies: bool) -> AsyncIterator[list[SourceRow]]:
        """The round's source rows up to `watermark`, derived by the `signals` rules (None: the configured ones, which
        the signals read model holds), in chunks. With `copies`, exact copies of an earlier row and rows without
        consent come unread (see SourceRow)."""
        ...

    async def judgements(self, watermark: int) -> dict[str, tuple[Judgement, ...]]:
        """Thumbs and ratings (by feedback kind) of the items two or more raters judged, as of `watermark`."""
        ...

    def report(self, watermark: int) -> Awaitable[dict[str, Any]]:
        """The signals report's figures as of `watermark`, in this snapshot (may run beside further reads)."""
        ...


class RoundSource(Protocol):
    """What a round build reads and where it publishes."""

    async def derive_signals(self) -> None:
        """Bring the signals read model up to the log's head as it is now."""
        ...

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Hold the build lock for a whole build; BuilderBusy when another holds it. Rollbacks, restores and
        promotions do not wait for it: they take the rounds lock, which only the publication holds."""
        ...

    def snapshot(self) -> AbstractAsyncContextManager[RoundSnapshot]: ...

    def publication(self) -> AbstractAsyncContextManager[Publication]:
        """A unit of work that sees every commit made so far (the build's snapshot does not), under the rounds
        lock: it publishes."""
        ...


class RoundBuilder(Protocol):
    """Cuts the rows into a round's files under `out` (flywheel.domain.rounds.build, wherever it runs). `semantic`
    is passed only when the config's semantic check is on."""

    async def __call__(self, chunks: AsyncIterator[list[Entry]], config: RoundConfig, quarantine: QuarantineList,
                       out: Path, *, watermark: int, parent: str | None, round_number: int,
                       semantic: SemanticHits | None = None) -> RoundResult: ...


class Embedder(Protocol):
    """A sentence embedding model: texts in, unit-length float32 vectors out (one row each)."""

    model: str  # what its vectors are kept under: RoundConfig.semantic_model must name it

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class TextEmbeddings(Protocol):
    """The kept embedding of each distinct text (by flywheel.domain.rounds.semantic.text_key) under each model."""

    async def missing(self, model: str, keys: Sequence[bytes]) -> set[bytes]:
        """The keys among `keys` with no vector under `model`."""
        ...

    async def save(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None: ...

    async def vectors(self, model: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The kept vectors of those of `keys` that have one."""
        ...

    async def keys(self, model: str) -> set[bytes]:
        """Every kept key under `model`."""
        ...

    async def newest(self, model: str) -> int:
        """The sequence number of the last vector kept under `model` (0 for none): every vector up to it is kept,
        every one kept later has a greater number."""
        ...

    async def compared(self, model: str, checked: str) -> tuple[int, dict[bytes, list[dict[str, Any]]]]:
        """How far the comparison `checked` has got (the last sequence number compared) and the matches found."""
        ...

    def scan(self, model: str, *, after: int, upto: int, batch: int = 16_384
             ) -> AsyncIterator[tuple[list[bytes], np.ndarray]]:
        """The kept keys and vectors numbered after `after` up to `upto`, in order, a batch at a time."""
        ...

    async def record(self, model: str, checked: str, upto: int, matches: dict[bytes, list[dict[str, Any]]]) -> None:
        """Keep a comparison's new matches ({item, side, score} each) and how far it has got, together."""
        ...


class RoundFiles(Protocol):
    """Round directories and the `current` pointer."""

    def staging(self, number: int) -> Path:
        """A fresh hidden directory to write round `number` into (leftovers of crashed builds are removed)."""
        ...

    def location(self, number: int) -> Path:
        """Where round `number` is once published."""
        ...

    def publish(self, staged: Path, number: int) -> None:
        """Make the staged round visible as round `number` (at `location(number)`)."""
        ...

    def discard(self, number: int, staged: Path | None) -> None:
        """Remove what a failed build left, staged or already renamed."""
        ...

    def point_current(self, number: int | None) -> None:
        """Make `current` point at round `number` (or remove it), atomically: readers see old or new."""
        ...

    def mark_rolled_back(self, number: int, note: dict[str, Any]) -> None: ...

    def clear_rolled_back(self, number: int) -> None: ...

    def write_consumption(self, number: int, consumptions: Sequence[dict[str, Any]]) -> None:
        """Write the round's consumption.json beside its files (manifest.json is never rewritten)."""
        ...

    def purge(self, number: int) -> int:
        """Delete round `number`'s data files, keeping its manifest and report; returns how many went."""
        ...


class HardCaseSampling(EventLog, Protocol):
    """One unit of work of the sampler: read the prompt candidates, record the sample."""

    async def prompt_candidates(self, watermark: int) -> tuple[list[PromptCandidate], dict[str, list[dict[str, Any]]]]:
        """Every prompt worth sampling as the log stood at `watermark`, and each one's conversation."""
        ...

    async def quarantine(self) -> Quarantine:
        """The quarantine list as it stands (items and active rollback slices), as a round build reads it."""
        ...

    async def interaction_facts(self, interaction_ids: Sequence[str]) -> list[InteractionFacts]:
        """What a rollback slice is judged on, for each of these interactions."""
        ...


class HardCaseStore(EventLog, Protocol):
    """What the hard-case loop (sample → generate → select) reads and records; `record` commits on its own."""

    async def signals_checkpoint(self) -> int: ...

    def sampling(self) -> AbstractAsyncContextManager[HardCaseSampling]: ...

    async def sample(self, sample_id: str | None) -> HardCasesSampled | None:
        """A recorded sample by id, or the newest one."""
        ...

    async def generated(self, sample_id: str, generator: str, model_version: str,
                        sampling: dict[str, Any]) -> set[str]:
        """Prompt keys of the sample that already have a group from this generator, model and sampling."""
        ...

    async def unselected(self, sample_id: str | None) -> list[dict[str, Any]]:
        """Candidate groups without a selection yet (of one sample, or all), oldest first: group_id, prompt_key,
        prompt, candidates and the model_version that generated them."""
        ...

    async def user_pairs(self, prompt_keys: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """The users' decided, consented preference pairs about these prompts (at most `limit`): pair_id,
        prompt_key, prompt, chosen, rejected, tie, rule, app_id, model_version."""
        ...

    async def probe_audits(self) -> dict[str, dict[str, Any]]:
        """Each scorer's latest bias-probe audit (sampling.probes.ProbeAudit as a dict), by scorer name."""
        ...

    async def quarantine(self) -> Quarantine:
        """The quarantine list as it stands."""
        ...


class Announcer(Protocol):
    """Tells the world about a round change (the rounds topic), waiting for the broker's ack. One with a
    prepare() method has it called by a round build once every row is read, to get ready in the background."""

    def __call__(self, message: dict[str, Any]) -> None: ...
