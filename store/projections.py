"""Read models as projections of the log: one code path for live ingest, replay and replay --check.

interactions and feedback are projected in the ingest transaction; signals follow the log a moment
later (store.signals.catch_up). Table names are unqualified on purpose: `check()` shadows them with
temp tables (pg_temp comes first on the search path), so the very same statements rebuild into
scratch copies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import CandidatesGenerated, CandidatesSelected, InternalEvent
from flywheel.domain.signals import SignalConfig, prompt_key
from store import keys, sealing
from store.audits import AUDIT_EVENT_TYPES, project_audits
from store.candidates import project_candidates
from store.erasures import ERASURE_EVENT_TYPES, project_erasures
from store.eventstore import NewEvent, StoredEvent, append, entries, head, lock_appends, read
from store.rounds import ROUND_EVENT_TYPES, project_rounds
from store.signals import CHECKPOINT, checkpoint, derive_groups, touched_groups

_INTERACTION_COLUMNS = (
    "interaction_id, position, event_id, app_id, model_version, prompt_version, prompt_key, user_id_hash,"
    " consent_training, occurred_at, messages, response, sampling, tags, last_position, tools, finish_reason"
)
_FEEDBACK_COLUMNS = (
    "position, event_id, type, interaction_id, app_id, model_version, prompt_version, user_id_hash,"
    " consent_training, occurred_at, payload"
)
# feedback type → counter column on the interaction it is about
_COUNTER = {"edit": "edits", "regenerate": "regenerations", "rating": "ratings", "comparison": "comparisons"}
# The interactions read model's feedback counters (store.erase takes an erased user's feedback back out of them).
COUNTERS = ("thumbs_up", "thumbs_down", "edits", "regenerations", "ratings", "comparisons")
_CANDIDATE_EVENT_TYPES = (CandidatesGenerated.TYPE, CandidatesSelected.TYPE)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def counted(kind: str, interaction_id: str, payload: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    """Which of COUNTERS a feedback event adds to (its index), and the interactions it counts on: both sides of a
    comparison, else the one it is about."""
    column = ("thumbs_up" if payload["value"] == "up" else "thumbs_down") if kind == "thumbs" else _COUNTER[kind]
    about = (payload["chosen_interaction_id"], payload["rejected_interaction_id"]) if kind == "comparison" \
        else (interaction_id,)
    return COUNTERS.index(column), about


def counter_deltas(feedback: Iterable[tuple[str, str, Mapping[str, Any], int]],
                   ) -> tuple[list[str], list[list[int]], list[int]]:
    """What feedback events (type, interaction id, payload, position) add to the counters of the interactions they
    count on: those interactions' ids, a column of counts for each of COUNTERS, and the newest position about each."""
    deltas: dict[str, list[int]] = defaultdict(lambda: [0] * (len(COUNTERS) + 1))
    for kind, interaction_id, payload, position in feedback:
        column, about = counted(kind, interaction_id, payload)
        for iid in about:
            row = deltas[iid]
            row[column] += 1
            row[-1] = max(row[-1], position)
    columns = [list(col) for col in zip(*deltas.values(), strict=True)] or [[] for _ in range(len(COUNTERS) + 1)]
    return list(deltas), columns[:-1], columns[-1]


async def project(conn: psycopg.AsyncConnection, events: Sequence[StoredEvent]) -> None:
    """Apply events (in position order) to interactions, feedback and candidate_groups, inside the caller's
    transaction (signals follow later: store.signals.catch_up). Events are in their readable form (personal fields
    opened: store.keys); an erased user's events derive nothing."""
    events = [e for e in events if not keys.is_erased(e.data)]
    if any(e.type in ERASURE_EVENT_TYPES for e in events):
        # In log order around each: an erasure removes what the events before it projected.
        run: list[StoredEvent] = []
        for e in events:
            if e.type in ERASURE_EVENT_TYPES:
                await project(conn, run)
                run = []
                async with conn.cursor() as cur:
                    await project_erasures(cur, [e])
            else:
                run.append(e)
        await project(conn, run)
        return
    generated = [e for e in events if e.type in _CANDIDATE_EVENT_TYPES]
    rounds = [e for e in events if e.type in ROUND_EVENT_TYPES]
    audits = [e for e in events if e.type in AUDIT_EVENT_TYPES]
    if generated or rounds or audits:
        async with conn.cursor() as cur:
            await project_candidates(cur, generated)
            await project_rounds(cur, rounds)
            await project_audits(cur, audits)
    interactions = [e for e in events if e.type == "interaction"]
    feedback = [e for e in events if e.type != "interaction" and "payload" in e.data and "user" in e.data]
    async with conn.cursor() as cur:
        if interactions:
            async with cur.copy(f"COPY interactions ({_INTERACTION_COLUMNS}) FROM STDIN") as copy:
                for e in interactions:
                    d, p = e.data, e.data["payload"]
                    await copy.write_row((
                        d["interaction_id"], e.position, e.event_id, d["app_id"], d["model_version"],
                        d["prompt_version"], prompt_key(p["messages"], p.get("tools")), d["user"]["id_hash"],
                        d["user"]["consent_training"],
                        d["occurred_at"], _json(p["messages"]), p["response"], _json(p.get("sampling", {})),
                        p.get("tags", []), e.position, _json(p["tools"]) if "tools" in p else None,
                        p.get("finish_reason"),
                    ))
        if not feedback:
            return
        async with cur.copy(f"COPY feedback ({_FEEDBACK_COLUMNS}) FROM STDIN") as copy:
            for e in feedback:
                d = e.data
                await copy.write_row((
                    e.position, e.event_id, e.type, d["interaction_id"], d["app_id"], d["model_version"],
                    d["prompt_version"], d["user"]["id_hash"], d["user"]["consent_training"],
                    d["occurred_at"], _json(d["payload"]),
                ))
        ids, columns, newest = counter_deltas(
            (e.type, e.data["interaction_id"], e.data["payload"], e.position) for e in feedback)
        sets = ", ".join(f"{c} = i.{c} + d.{c}" for c in COUNTERS)
        arrays = ", ".join(["%s::int[]"] * len(COUNTERS))
        await cur.execute(
            f"""
            UPDATE interactions i SET {sets}, last_position = greatest(i.last_position, d.last_position)
            FROM unnest(%s::text[], {arrays}, %s::bigint[])
                 AS d(interaction_id, {", ".join(COUNTERS)}, last_position)
            WHERE i.interaction_id = d.interaction_id
            """,
            [ids, *columns, newest],
        )


async def record(conn: psycopg.AsyncConnection, events: Sequence[NewEvent | InternalEvent]) -> list[StoredEvent]:
    """Append and project in one transaction (the caller's, when it has one): the log and the read models
    move together. Returns the events that were new."""
    async with conn.transaction():
        logged, ring = await sealing.seal(conn, entries(events))
        stored = await append(conn, logged)
        await project(conn, [replace(e, data=ring.open(e.data)) for e in stored])
    return stored


async def _project_log(conn: psycopg.AsyncConnection, config: SignalConfig,
                       progress: Callable[[int], None] | None = None) -> int:
    """Project the whole log into the (empty) read models, then derive every prompt group once; `progress` is told
    of each chunk of events projected."""
    count = 0
    async for chunk in read(conn):
        await project(conn, await keys.opened(conn, chunk))
        count += len(chunk)
        if progress:
            progress(len(chunk))
    async with conn.cursor() as cur:
        await cur.execute("SELECT DISTINCT prompt_key FROM interactions ORDER BY 1")
        await derive_groups(cur, [row[0] for row in await cur.fetchall()], config, upto=await head(conn))
    return count


async def rebuild(conn: psycopg.AsyncConnection, config: SignalConfig,
                  progress: Callable[[int], None] | None = None) -> int:
    """Throw the live read models away and project the whole log again, atomically."""
    async with conn.transaction():
        await lock_appends(conn)  # no append while the read models are rebuilt
        # Hold the signals checkpoint first, so a worker's projector waits instead of deadlocking with us.
        await conn.execute("INSERT INTO checkpoints (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                           [CHECKPOINT])
        await conn.execute("SELECT 1 FROM checkpoints WHERE name = %s FOR UPDATE", [CHECKPOINT])
        # Erased prompt groups waiting for the projector are derived with every other group here.
        await conn.execute(f"TRUNCATE {', '.join(_read_models())}, rederive")
        count = await _project_log(conn, config, progress)
        await conn.execute("UPDATE checkpoints SET position = %s WHERE name = %s", [await head(conn), CHECKPOINT])
        return count


def _read_models() -> tuple[str, ...]:
    # The table definitions (SQLModel) load only for a rebuild or a check: appending and projecting need none.
    from store.tables import READ_MODELS

    return READ_MODELS


def _comparable(table: str) -> str:
    """A table's columns as EXCEPT ALL can compare them: json (which has no equality) as jsonb."""
    from sqlalchemy import JSON
    from sqlmodel import SQLModel

    return ", ".join(f'"{name}"::jsonb' if type(column.type) is JSON else f'"{name}"'
                     for name, column in SQLModel.metadata.tables[table].columns.items())


@dataclass(frozen=True)
class Drift:
    table: str
    missing: int  # rows the rebuild has that the live table lacks
    extra: int  # rows the live table has that the rebuild lacks


async def check(conn: psycopg.AsyncConnection, config: SignalConfig,
                progress: Callable[[int], None] | None = None) -> list[Drift]:
    """Rebuild into scratch tables from one snapshot and compare with the live read models.

    Signals are compared for every prompt group the projector is up to date on: groups touched by
    events past its checkpoint are still to be re-derived, so they are left out (none when it has
    caught up)."""
    drifts = []
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        derived, newest = await checkpoint(conn), await head(conn)
        for table in _read_models():
            await conn.execute(f"CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING ALL) ON COMMIT DROP")
        await _project_log(conn, config, progress)
        async with conn.cursor() as c:
            pending = await touched_groups(c, derived, newest) if newest > derived else []
        for table in _read_models():
            where = " WHERE prompt_key <> ALL(%(pending)s)" if table == "signals" else ""
            columns = _comparable(table)
            rebuilt = f"SELECT {columns} FROM pg_temp.{table}{where}"
            live = f"SELECT {columns} FROM public.{table}{where}"
            cur = await conn.execute(
                f"SELECT (SELECT count(*) FROM ({rebuilt} EXCEPT ALL {live}) a),"
                f"       (SELECT count(*) FROM ({live} EXCEPT ALL {rebuilt}) b)",
                {"pending": pending},
            )
            row = await cur.fetchone()
            assert row is not None
            drifts.append(Drift(table, int(row[0]), int(row[1])))
    return drifts
