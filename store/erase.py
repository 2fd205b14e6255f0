"""A user's erasure in one transaction: the key goes, the erasure is logged, the user's rows leave the read models."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from flywheel.domain.events import ConsentChanged, UserErased
from flywheel.domain.log import NewEvent
from store import keys
from store.erasures import consent_changes
from store.eventstore import append
from store.projections import project, record
from store.signals import CHECKPOINT

_COUNTERS = ("thumbs_up", "thumbs_down", "edits", "regenerations", "ratings", "comparisons")
_COUNTER = {"edit": "edits", "regenerate": "regenerations", "rating": "ratings", "comparison": "comparisons"}


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
        # Lock order, as everywhere: the key row, the log, then the signals checkpoint (a projector run in progress
        # has read the user's rows: it finishes before they go).
        await keys.shred(conn, user)
        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        cur = await conn.execute("SELECT erased FROM erasures WHERE user_id_hash = %s", [user])
        known = await cur.fetchone()
        before = bool(known and known[0])
        await conn.execute("INSERT INTO checkpoints (name, position) VALUES (%s, 0)"
                           " ON CONFLICT (name) DO UPDATE SET position = checkpoints.position", [CHECKPOINT])
        out = Erased(new=False)
        async with conn.cursor() as cur:
            await cur.execute(
                'DELETE FROM parked WHERE user_id_hash = %s RETURNING topic, partition, "offset", data', [user])
            parked = [keys.KeyRing({user: None}).open(row[3]) for row in sorted(await cur.fetchall())]
            out.removed["parked"] = len(parked)

            await cur.execute("DELETE FROM interactions WHERE user_id_hash = %s RETURNING prompt_key, event_id::text",
                              [user])
            gone = await cur.fetchall()
            groups = {k for k, _ in gone}
            event_ids = [e for _, e in gone]
            out.removed["interactions"] = len(gone)
            await cur.execute(
                "DELETE FROM feedback WHERE user_id_hash = %s RETURNING position, event_id::text, type, interaction_id,"
                " payload", [user])
            feedback = await cur.fetchall()
            out.removed["feedback"] = len(feedback)
            event_ids += [row[1] for row in feedback]
            about = await _uncount(cur, feedback)
            if about:
                await cur.execute("SELECT DISTINCT prompt_key FROM interactions WHERE interaction_id = ANY(%s)",
                                  [sorted(about)])
                groups |= {row[0] for row in await cur.fetchall()}
            keys_ = sorted(groups)
            await cur.execute(
                f"DELETE FROM signals s USING unnest(%s::text[]) k(key) WHERE s.prompt_key = k.key AND {_SOURCED}"
                " RETURNING s.kind, s.position", [keys_, event_ids])
            signals = await cur.fetchall()
            out.removed["signals"] = len(signals)
            # Candidate groups of the user's prompts go with the erasure's projection (a replay does the same).
            prompts = sorted({k for k, _ in gone})
            await cur.execute("SELECT position FROM candidate_groups WHERE prompt_key = ANY(%s)", [prompts])
            candidate_groups = await cur.fetchall()
            out.removed["candidate_groups"] = len(candidate_groups)
            exposure = await _exposure(cur, [p for kind, p in signals if kind in TRAINING_KINDS]
                                       + [p for (p,) in candidate_groups])
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
# A signal row `s` with one of the given events among its sources. Each prompt group by its index, then a hashed
# lookup per source (`sources && ids` led the planner to test every signal row of the log).
_SOURCED = "EXISTS (SELECT 1 FROM unnest(s.sources) src WHERE src = ANY(%s::text[]))"


async def _exposure(cur: psycopg.AsyncCursor[Any], positions: list[int]) -> dict[str, int]:
    """For each round published so far: how many of these rows (by the log position of their newest source) lie at
    or before its watermark, so it may hold them."""
    await cur.execute(
        "SELECT r.number, count(*) FROM rounds r JOIN unnest(%s::bigint[]) p(position) ON p.position <= r.watermark"
        " GROUP BY r.number ORDER BY r.number", [positions])
    return {str(n): int(c) for n, c in await cur.fetchall()}


async def user_exposure(conn: psycopg.AsyncConnection, user: str) -> dict[str, int]:
    """_exposure of a user's training records and candidate groups as the read models hold them now."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT prompt_key, event_id::text FROM interactions WHERE user_id_hash = %s UNION ALL"
            " SELECT i.prompt_key, f.event_id::text FROM feedback f JOIN interactions i USING (interaction_id)"
            " WHERE f.user_id_hash = %s", [user, user])
        rows = await cur.fetchall()
        await cur.execute(
            f"SELECT s.position FROM signals s JOIN unnest(%s::text[]) k(key) ON s.prompt_key = k.key"
            f" WHERE s.kind = ANY(%s) AND {_SOURCED}",
            [sorted({k for k, _ in rows}), list(TRAINING_KINDS), [e for _, e in rows]])
        positions = [p for (p,) in await cur.fetchall()]
        await cur.execute("SELECT position FROM candidate_groups WHERE prompt_key = ANY(%s)",
                          [sorted({k for k, _ in rows})])
        positions += [p for (p,) in await cur.fetchall()]
        return await _exposure(cur, positions)


async def _uncount(cur: psycopg.AsyncCursor[Any], feedback: list[tuple[Any, ...]]) -> set[str]:
    """Take deleted feedback out of the counters of the interactions it was about (as if it had never been
    projected: store.projections.project); returns those interactions."""
    deltas: dict[str, list[int]] = defaultdict(lambda: [0] * len(_COUNTERS))
    for _, _, kind, interaction_id, payload in feedback:
        column = ("thumbs_up" if payload["value"] == "up" else "thumbs_down") if kind == "thumbs" else _COUNTER[kind]
        about = (payload["chosen_interaction_id"], payload["rejected_interaction_id"]) if kind == "comparison" \
            else (interaction_id,)
        for iid in about:
            deltas[iid][_COUNTERS.index(column)] += 1
    if not deltas:
        return set()
    ids = list(deltas)
    columns = [list(col) for col in zip(*deltas.values(), strict=True)]
    sets = ", ".join(f"{c} = i.{c} - d.{c}" for c in _COUNTERS)
    arrays = ", ".join(["%s::int[]"] * len(_COUNTERS))
    await cur.execute(
        f"UPDATE interactions i SET {sets} FROM unnest(%s::text[], {arrays})"
        f" AS d(interaction_id, {', '.join(_COUNTERS)}) WHERE i.interaction_id = d.interaction_id", [ids, *columns])
    # The newest event about each: what is left of its feedback.
    await cur.execute(
        """
        UPDATE interactions i SET last_position = greatest(i.position,
            (SELECT max(f.position) FROM feedback f WHERE f.interaction_id = i.interaction_id),
            (SELECT max(f.position) FROM feedback f
             WHERE f.type = 'comparison' AND f.payload ->> 'chosen_interaction_id' = i.interaction_id),
            (SELECT max(f.position) FROM feedback f
             WHERE f.type = 'comparison' AND f.payload ->> 'rejected_interaction_id' = i.interaction_id))
        WHERE i.interaction_id = ANY(%s) AND i.last_position = ANY(%s)
        """,
        [ids, [row[0] for row in feedback]])
    return set(ids)


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
