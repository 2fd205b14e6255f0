"""Tracking rows moved by a decision rather than by ingest: a topic created again, or an operator's reset.
Each move is a TrackingReset event in the log, in the transaction that moves the row."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from flywheel.domain.events import OPERATOR, TrackingReset
from store.eventstore import append


def tracked(conn: psycopg.Connection, group: str | None = None, topic: str | None = None) -> list[dict[str, Any]]:
    """Tracking rows (all, or one consumer group's of one topic), in key order."""
    return [
        {"consumer_group": g, "topic": t, "partition": p, "offset": o, "topic_id": i}
        for g, t, p, o, i in conn.execute(
            'SELECT consumer_group, topic, partition, "offset", topic_id FROM tracking'
            " WHERE (%(g)s::text IS NULL OR consumer_group = %(g)s) AND (%(t)s::text IS NULL OR topic = %(t)s)"
            " ORDER BY 1, 2, 3", {"g": group, "t": topic}).fetchall()
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset:
    previous: int | None  # None: the group had no row for that partition
    offset: int


async def reset(conn: psycopg.AsyncConnection, group: str, topic: str, partition: int, offset: int, *,
                topic_id: str | None, by: str, note: str) -> Reset:
    """Set a partition's stored offset (an operator's decision after TrackedBeyondLogEnd), recorded in the log."""
    async with conn.transaction():
        cur = await conn.execute(
            'SELECT "offset" FROM tracking WHERE consumer_group = %s AND topic = %s AND partition = %s FOR UPDATE',
            [group, topic, partition])
        row = await cur.fetchone()
        previous = None if row is None else int(row[0])
        await conn.execute(
            'INSERT INTO tracking (consumer_group, topic, partition, "offset", topic_id) VALUES (%s, %s, %s, %s, %s)'
            ' ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "offset" = excluded."offset",'
            " topic_id = excluded.topic_id, event_time = NULL, updated_at = now()",
            [group, topic, partition, offset, topic_id])
        await append(conn, [TrackingReset(
            consumer_group=group, topic=topic, partition=partition,
            previous_offset=-1 if previous is None else previous, offset=offset, reason=OPERATOR, by=by,
            topic_id=topic_id, note=note, key=str(uuid.uuid4()))])
    return Reset(previous=previous, offset=offset)
