"""An in-memory event log with units of work: gap-free positions, idempotent on event_id, all or nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar, overload

import orjson

from flywheel.domain.events import InternalEvent
from flywheel.domain.log import NewEvent, StoredEvent
from store.eventstore import entries
from store.memory.readmodel import RoundsReadModel


class MemoryLog:
    """The EventLog port in one unit of work on a MemoryEventStore (see MemoryEventStore.unit): what it records
    it sees at once, the other units once it commits."""

    def __init__(self, store: MemoryEventStore) -> None:
        self.store = store
        self.pending: list[StoredEvent] = []
        self._ids: set[str] = set()
        self._model: RoundsReadModel | None = None  # the store's read model and what this unit recorded

    @property
    def writing(self) -> bool:
        """Whether this unit has recorded, and so holds the store's append lock until it ends."""
        return self._model is not None

    @property
    def model(self) -> RoundsReadModel:
        """The rounds read model as this unit sees it."""
        return self.store.model if self._model is None else self._model

    async def head(self) -> int:
        return len(self.store.events) + len(self.pending)

    async def record(self, events: Sequence[NewEvent | InternalEvent]) -> list[StoredEvent]:
        if not events:
            return []
        if self._model is None:
            # As store.eventstore.append's table lock: no other unit appends until this one ends, so positions
            # are gap-free and become visible in order.
            await self.store.append_lock.acquire()
            self._model = self.store.model.copy()
        position = len(self.store.events) + len(self.pending)
        new: list[StoredEvent] = []
        for e in entries(events):
            if e.event_id in self.store.ids or e.event_id in self._ids:
                continue
            position += 1
            # Through JSON, as the data comes back from Postgres (tuples as lists).
            stored = StoredEvent(position, e.event_id, e.type, orjson.loads(orjson.dumps(e.data)))
            self._model.apply(stored)
            self._ids.add(e.event_id)
            self.pending.append(stored)
            new.append(stored)
        return new


L = TypeVar("L", bound=MemoryLog)


class MemoryEventStore:
    """The log and its rounds read model in memory, shared by the units of work and adapters made on it. Use it
    from one event loop."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []  # events[i] is at position i + 1
        self.ids: set[str] = set()
        # Replaced on each commit, never changed in place: a reference to it is a snapshot.
        self.model = RoundsReadModel()
        self.append_lock = asyncio.Lock()
        self.rounds_lock = asyncio.Lock()  # publications and on-call changes (store.unit_of_work.ROUNDS_LOCK)
        self.build_lock = asyncio.Lock()  # one build at a time (store.unit_of_work.BUILD_LOCK)

    async def head(self) -> int:
        """The newest committed position (0 when empty)."""
        return len(self.events)

    async def read(self, *, after: int = 0, upto: int | None = None,
                   chunk: int = 5000) -> AsyncIterator[list[StoredEvent]]:
        """The committed log in position order, in chunks (as store.eventstore.read)."""
        end = len(self.events) if upto is None else min(upto, len(self.events))
        for start in range(max(after, 0), end, chunk):
            yield self.events[start:min(start + chunk, end)]

    async def append(self, events: Sequence[NewEvent | InternalEvent]) -> list[StoredEvent]:
        """Record `events` in a unit of work of their own; returns those that were new."""
        async with self.unit() as log:
            return await log.record(events)

    @overload
    def unit(self) -> AbstractAsyncContextManager[MemoryLog]: ...

    @overload
    def unit(self, kind: Callable[[MemoryEventStore], L]) -> AbstractAsyncContextManager[L]: ...

    def unit(self, kind: Callable[[MemoryEventStore], MemoryLog] = MemoryLog) -> AbstractAsyncContextManager[MemoryLog]:
        """A unit of work (a `kind` of MemoryLog): what it records commits when the block ends, or is gone when the
        block raises."""
        return self._unit(kind(self))

    @contextlib.asynccontextmanager
    async def _unit(self, log: L) -> AsyncIterator[L]:
        try:
            yield log
            if log.writing:
                self.events.extend(log.pending)
                self.ids.update(e.event_id for e in log.pending)
                self.model = log.model
        finally:
            if log.writing:
                self.append_lock.release()
