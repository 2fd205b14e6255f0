"""A user's erasure in one transaction: the key goes, the erasure is logged, the user's rows leave the read models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from flywheel.domain.events import ConsentChanged, UserErased
from flywheel.domain.log import NewEvent
from store import keys
from store.erasures import consent_changes
from store.eventstore import append, lock_appends
from store.projections import COUNTERS, counter_deltas, project, record
from store.signals import CHECKPOINT


@dataclass
class Erased:
    """What one erasure removed (counts only)."""

    new: bool  # False: the user was erased before; this one changed nothing new
    removed: dict[str, int] = field(default_factory=dict)  # table -> rows removed
    groups: int = 0  # prompt groups left for the projector to derive again


async def erase_user(conn: psycopg.AsyncConnection, user: str, *, reason: str, by: str = "",
                     event: dict[str, Any] | None = None) -> Erased:
    """Erase `user`, idempotently: delete their data key (their events read as erased from now on), log the
    erasure, store their parked events as erased, and delete their rows from the read models that hold text
    (interactions, feedback, candidate groups) and the signals with any of their source events. The prompt groups
    those touched are queued for the signals projector, which derives them again (store.signals.catch_up).

    `event`: an app's `erasure` event (stored form) to record as the erasure, instead of one of the system's. A user
    erased before gets no second erasure event; the sweep of the read models runs again all the same."""
    async with conn.transaction():
        # One round trip for all of this (a pipeline): lock order, as everywhere, the key row, the log, then the
        # signals checkpoint (a projector run in progress has read the user's rows: it finishes before they go).
        async with conn.pipeline():
            await keys.shred(conn, user)
            await lock_appends(conn)
            known = await conn.execute("SELECT erased FROM erasures WHERE user_id_hash = %s", [user])
            await conn.execute("INSERT INTO checkpoints (name, position) VALUES (%s, 0)"
                               " ON CONFLICT (name) DO UPDATE SET position = checkpoints.position", [CHECKPOINT])
            deleted = await conn.execute(_DELETE_USERS_ROWS, {"u": user})
        was = await known.fetchone()
        before = bool(was and was[0])
        row = await deleted.fetchone()
        assert row is not None
        parked_rows, gone, feedback = row
        out = Erased(new=False)
        shredded = keys.KeyRing({user: None})
        parked = [shredded.open(data) for *_, data in sorted(parked_rows, key=lambda r: r[:3])]
        out.removed["parked"] = len(parked)
        out.removed["interactions"] = len(gone)
        out.removed["feedback"] = len(feedback)
        # Candidate groups of the user's prompts go with the erasure's projection (a replay does the same).
        prompts = sorted({k for k, _ in gone})
        groups = set(prompts)
        event_ids = [e for _, e in gone] + [row[1] for row in feedback]
        async with conn.cursor() as cur:
            groups |= await _uncount(cur, feedback)
            await cur.execute(f"DELETE FROM signals s WHERE {_SOURCED} RETURNING s.kind, s.position, s.prompt_key",
                              [event_ids])
            signals = await cur.fetchall()
            out.removed["signals"] = len(signals)
            keys_ = sorted(groups | {k for *_, k in signals})
            out.removed["candidate_groups"], exposure = await _exposure(
                cur, [p for kind, p, _ in signals if kind in TRAINING_KINDS], prompts)
            out.groups = len(keys_)
        # The erasure, and the user's parked events stored as erased (so counts still reconcile).
        erasure = UserErased(user_id_hash=user, reason=reason, by=by, exposure=exposure, prompt_keys=tuple(prompts))
        record_as: list[NewEvent | UserErased] = []
        if not before:
            record_as.append(erasure if event is None else NewEvent.of({**event, "exposure": exposure,
                                                                           "prompt_keys": list(prompts)}))
        stored = await append(conn, [*record_as, *(NewEvent.of(d) for d in parked)])
        await project(conn, stored)
        out.new = any(e.type == UserErased.TYPE for e in stored)
        if keys_:
            await conn.execute(
                "INSERT INTO rederive (prompt_key, position) SELECT k, %s FROM unnest(%s::text[]) k"
                " ON CONFLICT DO NOTHING", [stored[-1].position if stored else 0, keys_])
    return out


TRAINING_KINDS = ("pair", "kto", "sft")  # the signal records a round is cut from
# The user's parked events, interactions and feedback deleted in one statement, each as a list of rows.
_DELETE_USERS_ROWS = """
    WITH p AS (DELETE FROM parked WHERE user_id_hash = %(u)s RETURNING topic, partition, "offset", data),
         i AS (DELETE FROM interactions WHERE user_id_hash = %(u)s RETURNING prompt_key, event_id),
         f AS (DELETE FROM feedback WHERE user_id_hash = %(u)s
               RETURNING position, event_id, type, interaction_id, payload)
    SELECT (SELECT coalesce(json_agg(json_build_array(topic, partition, "offset", data)), '[]') FROM p),
           (SELECT coalesce(json_agg(json_build_array(prompt_key, event_id)), '[]') FROM i),
           (SELECT coalesce(json_agg(json_build_array(position, event_id, type, interaction_id, payload)), '[]')
            FROM f)
"""
# A signal row `s` with one of the given events among its sources, found through the GIN index on `sources`.
_SOURCED = "s.sources && %s::text[]"


async def _exposure(cur: psycopg.AsyncCursor[Any], positions: list[int],
                    prompts: list[str]) -> tuple[int, dict[str, int]]:
    """The candidate groups of `prompts`, counted; and for each round published so far, how many of these rows (by
    the log position of their newest source) and of those groups lie at or before its watermark, so it may hold
    them."""
    await cur.execute(
        """
        WITH c AS (SELECT position FROM candidate_groups WHERE prompt_key = ANY(%(prompts)s)),
             rows AS (SELECT unnest(%(positions)s::bigint[]) AS position UNION ALL SELECT position FROM c)
        SELECT (SELECT count(*) FROM c), (SELECT coalesce(json_object_agg(number, n), '{}') FROM (
            SELECT r.number, count(*) AS n FROM rounds r JOIN rows ON rows.position <= r.watermark
            GROUP BY r.number) x)
        """, {"prompts": prompts, "positions": positions})
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), {str(n): int(c) for n, c in row[1].items()}


async def user_exposure(conn: psycopg.AsyncConnection, user: str) -> dict[str, int]:
    """_exposure of a user's training records and candidate groups as the read models hold them now."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT prompt_key, event_id::text FROM interactions WHERE user_id_hash = %s UNION ALL"
            " SELECT i.prompt_key, f.event_id::text FROM feedback f JOIN interactions i USING (interaction_id)"
            " WHERE f.user_id_hash = %s", [user, user])
        rows = await cur.fetchall()
        await cur.execute(f"SELECT s.position FROM signals s WHERE s.kind = ANY(%s) AND {_SOURCED}",
                          [list(TRAINING_KINDS), [e for _, e in rows]])
        positions = [p for (p,) in await cur.fetchall()]
        return (await _exposure(cur, positions, sorted({k for k, _ in rows})))[1]


async def _uncount(cur: psycopg.AsyncCursor[Any], feedback: list[list[Any]]) -> set[str]:
    """Take deleted feedback out of the counters of the interactions it was about (as if it had never been
    projected: store.projections.project), and their newest event where it was one of these; returns the prompt
    groups of those interactions."""
    ids, columns, _ = counter_deltas((kind, iid, payload, position) for position, _, kind, iid, payload in feedback)
    if not ids:
        return set()
    sets = ", ".join(f"{c} = i.{c} - d.{c}" for c in COUNTERS)
    arrays = ", ".join(["%s::int[]"] * len(COUNTERS))
    # The newest event about each is recounted from what is left of its feedback (this statement sees the deletes).
    await cur.execute(
        f"""
        UPDATE interactions i SET {sets}, last_position = CASE WHEN i.last_position <> ALL(%s) THEN i.last_position
            ELSE greatest(i.position,
                (SELECT max(f.position) FROM feedback f WHERE f.interaction_id = i.interaction_id),
                (SELECT max(f.position) FROM feedback f
                 WHERE f.type = 'comparison' AND f.payload ->> 'chosen_interaction_id' = i.interaction_id),
                (SELECT max(f.position) FROM feedback f
                 WHERE f.type = 'comparison' AND f.payload ->> 'rejected_interaction_id' = i.interaction_id)) END
        FROM unnest(%s::text[], {arrays}) AS d(interaction_id, {', '.join(COUNTERS)})
        WHERE i.interaction_id = d.interaction_id
        RETURNING i.prompt_key
        """, [[row[0] for row in feedback], ids, *columns])
    return {row[0] for row in await cur.fetchall()}


async def change_consent(conn: psycopg.AsyncConnection, user: str, *, granted: bool, by: str = "") -> bool:
    """Withdraw or grant again a user's training consent; False when it already was so (nothing recorded)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"consent:{user}"])
        changes, withdrawn = await consent_changes(conn, user)
        if withdrawn != granted:
            return False
        exposure = {} if granted else await user_exposure(conn, user)
        await record(conn, [ConsentChanged(user_id_hash=user, granted=granted, change=changes, by=by,
                                           exposure=exposure)])
        return True
