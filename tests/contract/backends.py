"""The memory and Postgres implementations of the ports behind one face, for the contract suites."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import psycopg

from flywheel.domain.log import StoredEvent
from flywheel.domain.signals import SignalConfig
from flywheel.ports import EventLog, Rounds, RoundSource
from store.db import connect
from store.eventstore import head, read
from store.memory import MemoryEventStore, MemoryRounds, MemoryRoundSource
from store.roundsource import PostgresRoundSource
from store.unit_of_work import PostgresRounds, transaction


class Backend(Protocol):
    """One implementation of the ports. Each `unit`, `rounds` and `source` is a client of its own (in Postgres a
    connection of its own), as two processes would be."""

    def unit(self) -> AbstractAsyncContextManager[EventLog]: ...

    def rounds(self) -> AbstractAsyncContextManager[Rounds]: ...

    def source(self) -> AbstractAsyncContextManager[RoundSource]: ...

    async def read(self, *, after: int = 0, upto: int | None = None) -> list[StoredEvent]:
        """What is committed, in position order."""
        ...

    async def head(self) -> int: ...


class Memory:
    def __init__(self) -> None:
        self.store = MemoryEventStore()

    def unit(self) -> AbstractAsyncContextManager[EventLog]:
        return self.store.unit()

    @contextlib.asynccontextmanager
    async def rounds(self) -> AsyncIterator[Rounds]:
        yield MemoryRounds(self.store)

    @contextlib.asynccontextmanager
    async def source(self) -> AsyncIterator[RoundSource]:
        yield MemoryRoundSource(self.store)

    async def read(self, *, after: int = 0, upto: int | None = None) -> list[StoredEvent]:
        return [e async for chunk in self.store.read(after=after, upto=upto, chunk=2) for e in chunk]

    async def head(self) -> int:
        return await self.store.head()


class Postgres:
    def __init__(self, url: str) -> None:
        self.url = url

    async def _connection(self) -> psycopg.AsyncConnection:
        return await connect(self.url, autocommit=True)

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[EventLog]:
        async with await self._connection() as conn, transaction(conn) as log:
            yield log

    @contextlib.asynccontextmanager
    async def rounds(self) -> AsyncIterator[Rounds]:
        async with await self._connection() as conn:
            yield PostgresRounds(conn)

    @contextlib.asynccontextmanager
    async def source(self) -> AsyncIterator[RoundSource]:
        async with await self._connection() as conn:
            yield PostgresRoundSource(conn, SignalConfig())

    async def read(self, *, after: int = 0, upto: int | None = None) -> list[StoredEvent]:
        async with await self._connection() as conn, conn.transaction():
            return [e async for chunk in read(conn, after=after, upto=upto, chunk=2) for e in chunk]

    async def head(self) -> int:
        async with await self._connection() as conn:
            return await head(conn)
