"""Rounds and the quarantine list in the log: their events, their read models and the queries on-call uses."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import (
    ROUND_EVENTS,
    NightlyRunFinished,
    QuarantineItemsAdded,
    RoundConsumed,
    RoundPromoted,
    RoundPublished,
    RoundPurged,
    RoundRestored,
    RoundRolledBack,
    RoundSuperseded,
)
from flywheel.domain.log import StoredEvent
from flywheel.domain.rounds import QuarantineItem, QuarantineList
from flywheel.ports import Quarantine

SLICE_FIELDS = ("app_id", "model_version", "prompt_version", "since", "until")
ROUND_EVENT_TYPES = frozenset(t.TYPE for t in ROUND_EVENTS)


async def project_rounds(cur: psycopg.AsyncCursor[Any], events: Sequence[StoredEvent]) -> None:
    """Apply round and quarantine events (in position order) to their read models."""
    for e in events:
        p = e.data["payload"]
        if e.type == QuarantineItemsAdded.TYPE:
            added = QuarantineItemsAdded.of(p)
            await cur.executemany(
                "INSERT INTO quarantine_items (item_id, list_name, prompt, answer, position)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(i.item_id, added.list_name, i.prompt, i.answer, e.position) for i in added.items],
            )
        elif e.type == RoundPublished.TYPE:
            published = RoundPublished.of(p)
            built = {"what": f"built ({published.state})", "by": published.by or None, "position": e.position,
                     **({"reason": "; ".join(published.held_because)} if published.held_because else {})}
            await cur.execute(
                "INSERT INTO rounds (number, position, path, content_hash, watermark, parent, quarantine_version,"
                " summary, rolled_back, consumed_by, state, promotion, history)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, false, '{}', %s, %s, %s)",
                (published.round, e.position, published.path, published.content_hash, published.watermark,
                 published.parent, published.quarantine_version, orjson.dumps(published.summary).decode(),
                 published.state, orjson.dumps(published.promotion).decode(), orjson.dumps([built]).decode()),
            )
        elif e.type == RoundPromoted.TYPE:
            await cur.execute("UPDATE rounds SET state = 'promoted' WHERE number = %s", (p["round"],))
            await _history(cur, p["round"], {"what": "promoted", "reason": p["reason"]}, e)
        elif e.type == RoundRolledBack.TYPE:
            rolled = RoundRolledBack.of(p)
            await cur.execute(
                "UPDATE rounds SET rolled_back = true, rollback_reason = %s, rolled_back_position = %s"
                " WHERE number = %s", (rolled.reason, e.position, rolled.round))
            await _history(cur, rolled.round, {"what": "rolled back", "reason": rolled.reason}, e)
            if rolled.quarantine:
                await cur.execute(
                    "INSERT INTO quarantine_slices (round_number, position, filters, reason, active)"
                    " VALUES (%s, %s, %s, %s, true) ON CONFLICT (round_number) DO UPDATE"
                    " SET position = excluded.position, filters = excluded.filters, reason = excluded.reason,"
                    " active = true",
                    (rolled.round, e.position, orjson.dumps(rolled.quarantine).decode(), rolled.reason))
        elif e.type == RoundRestored.TYPE:
            await cur.execute("UPDATE rounds SET rolled_back = false, rollback_reason = NULL,"
                              " rolled_back_position = NULL WHERE number = %s", (p["round"],))
            await cur.execute("UPDATE quarantine_slices SET active = false WHERE round_number = %s", (p["round"],))
            await _history(cur, p["round"], {"what": "restored"}, e)
        elif e.type == NightlyRunFinished.TYPE:
            await cur.execute(
                "INSERT INTO nightly_runs (run_id, position, started_at, finished_at, status, steps, error)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (p["run_id"], e.position, p["started_at"], e.data["occurred_at"], p["status"],
                 orjson.dumps(p["steps"]).decode(), p["error"]))
        elif e.type == RoundSuperseded.TYPE:
            await cur.execute("UPDATE rounds SET state = 'superseded' WHERE number = %s", (p["round"],))
            await _history(cur, p["round"], {"what": f"superseded by round {p['by_round']}"}, e)
        elif e.type == RoundPurged.TYPE:
            await _history(cur, p["round"], {"what": f"purged ({p['files']} data files deleted)"}, e)
        elif e.type == RoundConsumed.TYPE:
            consumed = RoundConsumed.of(p)
            await cur.execute(
                "UPDATE rounds SET consumed_by = array_append(consumed_by, %s),"
                " consumptions = consumptions || %s::jsonb WHERE number = %s AND NOT %s = ANY(consumed_by)",
                (consumed.run_id, orjson.dumps([{**consumed.record(), "position": e.position}]).decode(),
                 consumed.round, consumed.run_id))
            await _history(cur, consumed.round, {"what": consumed.describe()}, e)


async def _history(cur: psycopg.AsyncCursor[Any], number: int, entry: dict[str, Any], e: StoredEvent) -> None:
    """Add what happened to a round, by whom (the event's `by`; None when it was not recorded), to its history."""
    done = {**entry, "by": e.data["payload"].get("by") or None, "position": e.position}
    await cur.execute("UPDATE rounds SET history = history || %s::jsonb WHERE number = %s",
                      (orjson.dumps([done]).decode(), number))


# ---- queries ----

_ROUND_COLUMNS = ("number, position, path, content_hash, watermark, parent, quarantine_version, summary, rolled_back,"
                  " rollback_reason, consumed_by, state, promotion, history, consumptions")


def _round(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip([c.strip() for c in _ROUND_COLUMNS.split(",")], row, strict=True))


async def rounds(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    cur = await conn.execute(f"SELECT {_ROUND_COLUMNS} FROM rounds ORDER BY number")
    return [_round(r) for r in await cur.fetchall()]


async def nightly_runs(conn: psycopg.AsyncConnection, limit: int = 20) -> list[dict[str, Any]]:
    """The newest nightly runs, oldest first: when, done or failed (and why), what each step did."""
    cur = await conn.execute(
        "SELECT * FROM (SELECT run_id, started_at, finished_at, status, steps, error, position FROM nightly_runs"
        " ORDER BY position DESC LIMIT %s) r ORDER BY position", [limit])
    return [{"run_id": r, "started_at": s.isoformat(), "finished_at": f.isoformat(), "status": st, "steps": steps,
             "error": err} for r, s, f, st, steps, err, _ in await cur.fetchall()]


async def round_by_number(conn: psycopg.AsyncConnection, number: int) -> dict[str, Any] | None:
    cur = await conn.execute(f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE number = %s", [number])
    row = await cur.fetchone()
    return _round(row) if row else None


async def current_round(conn: psycopg.AsyncConnection) -> dict[str, Any] | None:
    """The newest promoted round that is not rolled back: what trainers should use (a held round never is)."""
    cur = await conn.execute(f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE NOT rolled_back AND state = 'promoted'"
                             " ORDER BY number DESC LIMIT 1")
    row = await cur.fetchone()
    return _round(row) if row else None


QuarantineRow = tuple[str, str, str, str]  # item_id, list name, prompt, answer


async def quarantine(conn: psycopg.AsyncConnection) -> tuple[str, list[QuarantineRow], list[dict[str, Any]]]:
    """The quarantine list as it stands: (version, items (item_id, list, prompt, answer), active event slices).
    The version names the content, so two builds with the same list record the same version."""
    cur = await conn.execute("SELECT item_id, list_name, prompt, answer FROM quarantine_items ORDER BY item_id")
    items: list[QuarantineRow] = [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]
    cur = await conn.execute("SELECT round_number, filters FROM quarantine_slices WHERE active ORDER BY round_number")
    slices = [{"round": n, **f} for n, f in await cur.fetchall()]
    return quarantine_version([i[0] for i in items], slices), items, slices


async def load_quarantine(conn: psycopg.AsyncConnection) -> Quarantine:
    """The quarantine list as it stands, as the services read it: what a build and the sampler leave out."""
    version, items, slices = await quarantine(conn)
    return Quarantine(version=version, slices=slices, items=QuarantineList(version=version, items=tuple(
        QuarantineItem(item_id=i, list_name=n, prompt=p, answer=a) for i, n, p, a in items)))


def quarantine_version(item_ids: Sequence[str], slices: Sequence[dict[str, Any]]) -> str:
    """The name of a quarantine list's content: its item ids (sorted) and active slices (by round)."""
    return hashlib.sha256(orjson.dumps([list(item_ids), list(slices)], option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


async def rolled_back_since(conn: psycopg.AsyncConnection, position: int) -> list[int]:
    """Rounds that RoundRolledBack events after `position` took out of use, and that are still rolled back."""
    cur = await conn.execute("SELECT number FROM rounds WHERE rolled_back AND rolled_back_position > %s"
                             " ORDER BY number", [position])
    return [int(n) for n, in await cur.fetchall()]


async def erasure_exposure(conn: psycopg.AsyncConnection) -> dict[int, dict[str, int]]:
    """Rounds that hold rows of users erased, or with training consent withdrawn, since they were published: round
    number -> {"rows", "users"} (counts only). A round re-cut since (superseded) stays flagged until it is purged."""
    cur = await conn.execute(
        """
        SELECT r.number, sum((e.data -> 'exposure' ->> r.number::text)::bigint), count(*)
        FROM erasures x
        JOIN events e ON e.position = CASE WHEN x.erased THEN x.erased_position ELSE x.position END
        JOIN rounds r ON r.position < e.position AND e.data -> 'exposure' ? r.number::text
        WHERE (x.erased OR x.withdrawn)
          AND NOT EXISTS (
              SELECT 1 FROM jsonb_array_elements(r.history) h WHERE h ->> 'what' LIKE 'purged%%')
        GROUP BY r.number
        """)
    return {int(n): {"rows": int(rows), "users": int(users)} for n, rows, users in await cur.fetchall()}
