"""The Rounds port in memory: units of work on a MemoryEventStore, under its rounds lock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from flywheel.ports import RoundState
from store.memory.log import MemoryEventStore, MemoryLog


class MemoryRoundsChange(MemoryLog):
    """The RoundsChange port: it sees the rounds as its own records left them."""

    async def find(self, number: int) -> RoundState | None:
        return self.model.rounds.get(number)

    async def current(self) -> RoundState | None:
        return self.model.current()


class MemoryRounds:
    def __init__(self, store: MemoryEventStore) -> None:
        self.store = store

    @contextlib.asynccontextmanager
    async def change(self, *, lock: bool = True) -> AsyncIterator[MemoryRoundsChange]:
        async with contextlib.AsyncExitStack() as stack:
            if lock:
                await stack.enter_async_context(self.store.rounds_lock)
            yield await stack.enter_async_context(self.store.unit(MemoryRoundsChange))
