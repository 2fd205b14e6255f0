"""Rounds and the quarantine list in the log: their events, their read models and the queries on-call uses."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from store.eventstore import NewEvent, StoredEvent

QUARANTINE_ITEMS_ADDED = "quarantine_items_added"
ROUND_PUBLISHED = "round_published"
ROUND_ROLLED_BACK = "round_rolled_back"
ROUND_RESTORED = "round_restored"
ROUND_CONSUMED = "round_consumed"
NIGHTLY_RUN = "nightly_run"
ROUND_EVENTS = (QUARANTINE_ITEMS_ADDED, ROUND_PUBLISHED, ROUND_ROLLED_BACK, ROUND_RESTORED, ROUND_CONSUMED,
                NIGHTLY_RUN)
_NAMESPACE = uuid.UUID("9a1d3c55-0b7e-4c62-8f0a-3e5d2b7c6a14")
SLICE_FIELDS = ("app_id", "model_version", "prompt_version", "since", "until")


def _event(kind: str, identity: str, payload: dict[str, Any]) -> NewEvent:
    return NewEvent.internal(str(uuid.uuid5(_NAMESPACE, f"{kind}:{identity}")), kind, payload)


def item_id(prompt: str, answer: str) -> str:
    return hashlib.sha256(orjson.dumps([prompt, answer])).hexdigest()[:16]


def quarantine_added(list_name: str, items: Sequence[tuple[str, str]]) -> NewEvent:
    rows = sorted({(item_id(p, a), p, a) for p, a in items})
    payload = {"list_name": list_name, "items": [{"item_id": i, "prompt": p, "answer": a} for i, p, a in rows]}
    return _event(QUARANTINE_ITEMS_ADDED, f"{list_name}:{[i for i, _, _ in rows]}", payload)


def round_published(payload: dict[str, Any]) -> NewEvent:
    return _event(ROUND_PUBLISHED, f"{payload['round']}:{payload['content_hash']}", payload)


def round_rolled_back(number: int, reason: str, filters: dict[str, str] | None, after: int) -> NewEvent:
    """`after`: the log position this decision was made at, so a rollback after a restore is a new fact."""
    return _event(ROUND_ROLLED_BACK, f"{number}:{after}", {"round": number, "reason": reason, "quarantine": filters})


def round_restored(number: int, after: int) -> NewEvent:
    return _event(ROUND_RESTORED, f"{number}:{after}", {"round": number})


def round_consumed(number: int, run_id: str) -> NewEvent:
    return _event(ROUND_CONSUMED, f"{number}:{run_id}", {"round": number, "run_id": run_id})


def nightly_run(run_id: str, started_at: str, status: str, steps: dict[str, Any], error: str | None) -> NewEvent:
    """One run of the nightly pipeline, done ("ok") or "failed" (with the error): its history for on-call."""
    return _event(NIGHTLY_RUN, run_id, {"run_id": run_id, "started_at": started_at, "status": status,
                                        "steps": steps, "error": error})


async def project_rounds(cur: psycopg.AsyncCursor[Any], events: Sequence[StoredEvent]) -> None:
    """Apply round and quarantine events (in position order) to their read models."""
    for e in events:
        p = e.data["payload"]
        if e.type == QUARANTINE_ITEMS_ADDED:
            await cur.executemany(
                "INSERT INTO quarantine_items (item_id, list_name, prompt, answer, position)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(i["item_id"], p["list_name"], i["prompt"], i["answer"], e.position) for i in p["items"]],
            )
        elif e.type == ROUND_PUBLISHED:
            await cur.execute(
                "INSERT INTO rounds (number, position, path, content_hash, watermark, parent, quarantine_version,"
                " summary, rolled_back, consumed_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, false, '{}')",
                (p["round"], e.position, p["path"], p["content_hash"], p["watermark"], p["parent"],
                 p["quarantine_version"], orjson.dumps(p["summary"]).decode()),
            )
        elif e.type == ROUND_ROLLED_BACK:
            await cur.execute(
                "UPDATE rounds SET rolled_back = true, rollback_reason = %s, rolled_back_position = %s"
                " WHERE number = %s", (p["reason"], e.position, p["round"]))
            if p["quarantine"]:
                await cur.execute(
                    "INSERT INTO quarantine_slices (round_number, position, filters, reason, active)"
                    " VALUES (%s, %s, %s, %s, true) ON CONFLICT (round_number) DO UPDATE"
                    " SET position = excluded.position, filters = excluded.filters, reason = excluded.reason,"
                    " active = true",
                    (p["round"], e.position, orjson.dumps(p["quarantine"]).decode(), p["reason"]))
        elif e.type == ROUND_RESTORED:
            await cur.execute("UPDATE rounds SET rolled_back = false, rollback_reason = NULL,"
                              " rolled_back_position = NULL WHERE number = %s", (p["round"],))
            await cur.execute("UPDATE quarantine_slices SET active = false WHERE round_number = %s", (p["round"],))
        elif e.type == NIGHTLY_RUN:
            await cur.execute(
                "INSERT INTO nightly_runs (run_id, position, started_at, finished_at, status, steps, error)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (p["run_id"], e.position, p["started_at"], e.data["occurred_at"], p["status"],
                 orjson.dumps(p["steps"]).decode(), p["error"]))
        elif e.type == ROUND_CONSUMED:
            await cur.execute("UPDATE rounds SET consumed_by = array_append(consumed_by, %s) WHERE number = %s"
                              " AND NOT %s = ANY(consumed_by)", (p["run_id"], p["round"], p["run_id"]))


# ---- queries ----

_ROUND_COLUMNS = ("number, position, path, content_hash, watermark, parent, quarantine_version, summary, rolled_back,"
                  " rollback_reason, consumed_by")


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
    """The newest round that is not rolled back: what trainers should use."""
    cur = await conn.execute(f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE NOT rolled_back ORDER BY number DESC LIMIT 1")
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
    version = hashlib.sha256(orjson.dumps([[i[0] for i in items], slices], option=orjson.OPT_SORT_KEYS)).hexdigest()
    return version[:16], items, slices
