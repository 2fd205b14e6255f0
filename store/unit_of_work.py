"""Units of work on one Postgres connection: the log (append + project) and the rounds under their lock.

The unit of work owns the transaction; what runs inside never commits on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg

from flywheel.domain.events import InternalEvent
from flywheel.domain.log import StoredEvent
from flywheel.ports import RoundState
from store.eventstore import head
from store.projections import record
from store.rounds import current_round, rolled_back_since, round_by_number

ROUNDS_LOCK = 0x526F756E  # advisory lock: one publication or on-call change of the rounds at a time
BUILD_LOCK = 0x4275696C  # advisory lock (per session): one round build at a time, across instances


def round_state(row: dict[str, Any]) -> RoundState:
    return RoundState(number=int(row["number"]), position=int(row["position"]), path=row["path"],
                      content_hash=row["content_hash"], watermark=int(row["watermark"]), parent=row["parent"],
                      quarantine_version=row["quarantine_version"], summary=row["summary"],
                      rolled_back=bool(row["rolled_back"]), rollback_reason=row["rollback_reason"],
                      consumed_by=tuple(row["consumed_by"]), state=row.get("state", "promoted"),
                      promotion=tuple(row.get("promotion") or ()), history=tuple(row.get("history") or ()),
                      consumptions=tuple(row.get("consumptions") or ()))


class PostgresLog:
    """The EventLog port inside the caller's transaction on `conn` (which must see every commit: READ COMMITTED)."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    async def head(self) -> int:
        return await head(self.conn)

    async def record(self, events: Sequence[InternalEvent]) -> list[StoredEvent]:
        return await record(self.conn, events)


class PostgresPublication(PostgresLog):
    """The Publication port: the caller's transaction on `conn`, holding the rounds lock."""

    async def rolled_back_since(self, position: int) -> list[int]:
        return await rolled_back_since(self.conn, position)

    async def current(self) -> RoundState | None:
        found = await current_round(self.conn)
        return None if found is None else round_state(found)


@contextlib.asynccontextmanager
async def publication(conn: psycopg.AsyncConnection) -> AsyncIterator[PostgresPublication]:
    """A unit of work on `conn` under the rounds lock: a round is published while no rollback can land."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [ROUNDS_LOCK])
        yield PostgresPublication(conn)


class PostgresRoundsChange(PostgresLog):
    async def find(self, number: int) -> RoundState | None:
        found = await round_by_number(self.conn, number)
        return None if found is None else round_state(found)

    async def current(self) -> RoundState | None:
        found = await current_round(self.conn)
        return None if found is None else round_state(found)


class PostgresRounds:
    """The Rounds port: a transaction on `conn` holding the rounds lock until it ends."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def change(self, *, lock: bool = True) -> AsyncIterator[PostgresRoundsChange]:
        async with self.conn.transaction():
            if lock:
                await self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [ROUNDS_LOCK])
            yield PostgresRoundsChange(self.conn)


@contextlib.asynccontextmanager
async def transaction(conn: psycopg.AsyncConnection) -> AsyncIterator[PostgresLog]:
    """A unit of work on `conn`: what is recorded commits together, or not at all."""
    async with conn.transaction():
        yield PostgresLog(conn)
