"""The RoundSource port in memory: the rows a test gives, the rounds and quarantine of a MemoryEventStore."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Any

from flywheel.domain.quality import Judgement, length_bias_from_sums, position_bias_of
from flywheel.domain.signals import SignalConfig
from flywheel.ports import BuilderBusy, Quarantine, RoundState, SourceRow
from store.memory.log import MemoryEventStore, MemoryLog
from store.memory.readmodel import RoundsReadModel


def empty_report() -> dict[str, Any]:
    """store.stats.signal_report's figures for a log without feedback or signals."""
    return {"signals": [], "feedback_rates": {}, "agreement": {"thumbs": {}, "rating": {}},
            "length_bias": asdict(length_bias_from_sums(decided=0, longer=0, equal=0, sum_dm=0.0, sum_dd=0.0,
                                                        sum_mm=0.0)),
            "position_bias": asdict(position_bias_of(0, 0, 0)), "scorer_agreement": {}, "bias_probes": [],
            "flagged_scorers": []}


class MemorySnapshot:
    """The RoundSnapshot port: the store as it stood when the snapshot began."""

    def __init__(self, *, head: int, checkpoint: int, model: RoundsReadModel, rows: Sequence[SourceRow],
                 report: dict[str, Any], judgements: dict[str, tuple[Judgement, ...]] | None = None) -> None:
        self._head, self._checkpoint, self._model, self._rows, self._report = head, checkpoint, model, rows, report
        self._judgements = judgements or {}

    async def head(self) -> int:
        return self._head

    async def signals_checkpoint(self) -> int:
        return self._checkpoint

    async def next_number(self) -> int:
        return self._model.next_number()

    async def current(self) -> RoundState | None:
        return self._model.current()

    async def quarantine(self) -> Quarantine:
        return self._model.quarantine()

    async def rows(self, watermark: int, signals: SignalConfig | None, *, copies: bool,
                   chunk: int = 100) -> AsyncIterator[list[SourceRow]]:
        """The given rows up to `watermark`, in their order. Without `copies`, each must come with its data."""
        rows = [r for r in self._rows if r.position <= watermark]
        if not copies and any(r.data is None for r in rows):
            raise ValueError("a row without its data, where a rollback slice may leave the row it copies out")
        for start in range(0, len(rows), chunk):
            yield rows[start:start + chunk]

    async def judgements(self, watermark: int) -> dict[str, tuple[Judgement, ...]]:
        return dict(self._judgements)

    async def report(self, watermark: int) -> dict[str, Any]:
        return dict(self._report)  # the build adds to it


class MemoryRoundSource:
    """The RoundSource port on `store`: a build reads `rows` (in order, those up to its watermark); the signals read
    model counts as derived up to `signals_checkpoint`, which derive_signals moves to the head."""

    def __init__(self, store: MemoryEventStore, rows: Sequence[SourceRow] = (), *, signals_checkpoint: int = 0,
                 report: dict[str, Any] | None = None,
                 judgements: dict[str, tuple[Judgement, ...]] | None = None) -> None:
        self.store, self.rows, self.signals_checkpoint = store, list(rows), signals_checkpoint
        self.report = empty_report() if report is None else report
        self.judgements = judgements or {}

    async def derive_signals(self) -> None:
        self.signals_checkpoint = await self.store.head()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        if self.store.build_lock.locked():
            raise BuilderBusy("another round build is running")
        async with self.store.build_lock:
            yield

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[MemorySnapshot]:
        yield MemorySnapshot(head=await self.store.head(), checkpoint=self.signals_checkpoint, model=self.store.model,
                             rows=list(self.rows), report=self.report, judgements=self.judgements)

    @contextlib.asynccontextmanager
    async def publication(self) -> AsyncIterator[MemoryPublication]:
        async with self.store.rounds_lock, self.store.unit(MemoryPublication) as log:
            yield log


class MemoryPublication(MemoryLog):
    """The Publication port: a unit of work under the store's rounds lock."""

    async def rolled_back_since(self, position: int) -> list[int]:
        return self.model.rolled_back_since(position)

    async def current(self) -> RoundState | None:
        return self.model.current()
