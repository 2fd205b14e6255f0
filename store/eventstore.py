"""Append-only event log with a global position; appends are idempotent on event_id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    type: str
    occurred_at: str
    data: dict[str, Any]
    interaction_id: str | None = None
    app_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    position: int
    event_id: str
    type: str
    data: dict[str, Any]


_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging_events (
    ord int, event_id uuid, type text, interaction_id text, app_id text, occurred_at timestamptz, data jsonb
) ON COMMIT DELETE ROWS
"""


async def append(conn: psycopg.AsyncConnection, events: Sequence[NewEvent]) -> list[StoredEvent]:
    """Append in order inside the caller's transaction; returns the events that were new, by position.

    The EXCLUSIVE lock serialises appenders so positions become visible in order: a reader that has
    seen position N never later finds a smaller one committed behind it (round watermarks rely on it).
    """
    if not events:
        return []
    async with conn.cursor() as cur:
        await cur.execute(_STAGING)
        async with cur.copy(
            "COPY staging_events (ord, event_id, type, interaction_id, app_id, occurred_at, data) FROM STDIN"
        ) as copy:
            for i, e in enumerate(events):
                await copy.write_row(
                    (i, e.event_id, e.type, e.interaction_id, e.app_id, e.occurred_at, orjson.dumps(e.data).decode())
                )
        await cur.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        await cur.execute(
            """
            INSERT INTO events (event_id, type, interaction_id, app_id, occurred_at, data)
            SELECT event_id, type, interaction_id, app_id, occurred_at, data FROM staging_events ORDER BY ord
            ON CONFLICT (event_id) DO NOTHING
            RETURNING position, event_id::text
            """
        )
        positions = {event_id: pos for pos, event_id in await cur.fetchall()}
        await cur.execute("TRUNCATE staging_events")
    stored = [
        StoredEvent(positions[e.event_id], e.event_id, e.type, e.data) for e in events if e.event_id in positions
    ]
    stored.sort(key=lambda s: s.position)
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
