"""Counts for `flywheel stats`: what is stored, dead-lettered, parked, and how far each consumer is."""

from __future__ import annotations

from typing import Any

import psycopg

from store.tables import READ_MODELS


def _pairs(conn: psycopg.Connection, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in conn.execute(sql).fetchall()}


def store_stats(conn: psycopg.Connection) -> dict[str, Any]:
    events = _pairs(conn, "SELECT type, count(*) FROM events GROUP BY 1 ORDER BY 1")
    dead = _pairs(conn, "SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1")
    parked = conn.execute("SELECT count(*) FROM parked").fetchone()
    head = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
    read_models = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in READ_MODELS}  # type: ignore[index]
    tracking = [
        {"consumer_group": g, "topic": t, "partition": p, "offset": o}
        for g, t, p, o in conn.execute(
            'SELECT consumer_group, topic, partition, "offset" FROM tracking ORDER BY 1, 2, 3'
        ).fetchall()
    ]
    return {
        "events": {"total": sum(events.values()), "by_type": events, "head_position": int(head[0]) if head else 0},
        "dead_lettered": {"total": sum(dead.values()), "by_reason": dead},
        "parked": int(parked[0]) if parked else 0,
        "read_models": read_models,
        "consumers": tracking,
    }
