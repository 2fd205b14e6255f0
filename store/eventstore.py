"""Append-only event log with a global position; appends are idempotent on event_id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import InternalEvent
from flywheel.domain.log import NewEvent, StoredEvent

# Appenders serialise on this transaction-scoped advisory lock rather than LOCK TABLE events IN EXCLUSIVE MODE:
# the table lock needs UPDATE, DELETE or TRUNCATE on the log, which the ingest role must not have (store.db).
APPEND_LOCK = 0x4170706E


async def lock_appends(cur: psycopg.AsyncCursor[Any] | psycopg.AsyncConnection) -> None:
    """Hold the log's append lock until the transaction ends: no other append (or rebuild) runs meanwhile."""
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK])


class SnapshotAppend(RuntimeError):
    """An append from a transaction that cannot see the log's current head."""


def entries(events: Sequence[NewEvent | InternalEvent]) -> list[NewEvent]:
    """Log entries of `events`; the system's own are stamped now."""
    at = datetime.now(UTC).isoformat()
    return [e if isinstance(e, NewEvent) else NewEvent.internal(e, at=at) for e in events]


async def append(conn: psycopg.AsyncConnection, events: Sequence[NewEvent | InternalEvent]) -> list[StoredEvent]:
    """Append in order inside the caller's transaction; returns the events that were new, by position.

    Appenders take the log's append lock (APPEND_LOCK) and number events themselves, so positions are gap-free and
    become visible in order: a reader that has seen position N never later finds a smaller one
    committed behind it (round watermarks rely on this). The lock also makes the duplicate check
    race-free, which lets the rows go in with one COPY.

    The head is read after the lock is granted, so the transaction must see commits made since it began: READ
    COMMITTED. A snapshot transaction (REPEATABLE READ, SERIALIZABLE) would number from the head it saw when it
    began and collide with every append committed since; it is refused before anything is written.
    """
    if not events:
        return []
    rows = entries(events)
    async with conn.cursor() as cur:
        await lock_appends(cur)
        await cur.execute("SELECT coalesce(max(position), 0), current_setting('transaction_isolation') FROM events")
        row = await cur.fetchone()
        if row is None or row[1] != "read committed":
            raise SnapshotAppend(f"append in a {row and row[1]} transaction: the log's head must be read after its"
                                 " lock is granted, which only READ COMMITTED sees; append in a transaction of its own")
        position = int(row[0])
        await cur.execute(
            "SELECT event_id::text FROM events WHERE event_id = ANY(%s::uuid[])", [[e.event_id for e in rows]]
        )
        existing = {row[0] for row in await cur.fetchall()}
        stored: list[StoredEvent] = []
        async with cur.copy(
            "COPY events (position, event_id, type, interaction_id, app_id, occurred_at, data) FROM STDIN"
        ) as copy:
            for e in rows:
                if e.event_id in existing:
                    continue
                existing.add(e.event_id)
                position += 1
                await copy.write_row(
                    (position, e.event_id, e.type, e.interaction_id, e.app_id, e.occurred_at,
                     orjson.dumps(e.data).decode())
                )
                stored.append(StoredEvent(position, e.event_id, e.type, e.data))
    return stored


async def read(
    conn: psycopg.AsyncConnection, *, after: int = 0, upto: int | None = None, chunk: int = 5000
) -> AsyncIterator[list[StoredEvent]]:
    """The log in position order, in chunks, through a server-side cursor (memory stays flat)."""
    query = "SELECT position, event_id::text, type, data FROM events WHERE position > %s"
    params: list[Any] = [after]
    if upto is not None:
        query += " AND position <= %s"
        params.append(upto)
    async with conn.cursor(name="read_events") as cur:
        cur.itersize = chunk
        await cur.execute(query + " ORDER BY position", params)
        while rows := await cur.fetchmany(chunk):
            yield [StoredEvent(*row) for row in rows]


async def head(conn: psycopg.AsyncConnection) -> int:
    """The newest position in the log (0 when empty)."""
    cur = await conn.execute("SELECT coalesce(max(position), 0) FROM events")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
