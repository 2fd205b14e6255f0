"""The erasure list as a read model (erasure and consent events), and what a build or the sampler reads of it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import PRIVACY_EVENT_TYPES, ConsentChanged, UserErased
from flywheel.domain.log import StoredEvent
from flywheel.ports import Erasures

ERASURE_EVENT_TYPES = PRIVACY_EVENT_TYPES


async def project_erasures(cur: psycopg.AsyncCursor[Any], events: Sequence[StoredEvent]) -> None:
    """Apply erasure and consent events (in position order) to the erasures table; a repeated one changes nothing
    but the newest position."""
    for e in events:
        user, p = e.data["user"]["id_hash"], e.data["payload"]
        if e.type == UserErased.TYPE:
            await cur.execute(
                "INSERT INTO erasures (user_id_hash, erased, erased_position, reason, withdrawn, position)"
                " VALUES (%(u)s, true, %(p)s, %(r)s, false, %(p)s) ON CONFLICT (user_id_hash) DO UPDATE SET"
                " erased = true, erased_position = coalesce(erasures.erased_position, %(p)s),"
                " reason = coalesce(erasures.reason, %(r)s), position = %(p)s",
                {"u": user, "p": e.position, "r": p.get("reason")})
            await cur.execute("DELETE FROM candidate_groups WHERE prompt_key = ANY(%s)",
                              [e.data.get("prompt_keys", [])])
        elif e.type == ConsentChanged.TYPE:
            await cur.execute(
                "INSERT INTO erasures (user_id_hash, erased, withdrawn, position) VALUES (%(u)s, false, %(w)s, %(p)s)"
                " ON CONFLICT (user_id_hash) DO UPDATE SET withdrawn = %(w)s, position = %(p)s",
                {"u": user, "w": not p["granted"], "p": e.position})


@dataclass(frozen=True, slots=True)
class ErasureList:
    """Who a build leaves out: erased users and users whose training consent is withdrawn, as of now. `version`
    names the list's content, so two builds under the same list agree on it whatever their watermark."""

    erased: frozenset[str]
    withdrawn: frozenset[str]

    @property
    def version(self) -> str:
        body = orjson.dumps([sorted(self.erased), sorted(self.withdrawn)])
        return hashlib.sha256(body).hexdigest()[:16]

    @property
    def excluded(self) -> frozenset[str]:
        return self.erased | self.withdrawn


async def erasure_list(conn: psycopg.AsyncConnection) -> ErasureList:
    cur = await conn.execute("SELECT user_id_hash, erased, withdrawn FROM erasures WHERE erased OR withdrawn")
    rows = await cur.fetchall()
    return ErasureList(erased=frozenset(u for u, e, _ in rows if e),
                       withdrawn=frozenset(u for u, e, w in rows if w and not e))


async def consent_changes(conn: psycopg.AsyncConnection, user: str) -> tuple[int, bool]:
    """How many consent events the user has had, and whether training consent is withdrawn now."""
    cur = await conn.execute(
        "SELECT count(*) FROM events WHERE type = %s AND data -> 'user' ->> 'id_hash' = %s",
        [ConsentChanged.TYPE, user])
    row = await cur.fetchone()
    cur = await conn.execute("SELECT withdrawn FROM erasures WHERE user_id_hash = %s", [user])
    state = await cur.fetchone()
    return (int(row[0]) if row else 0), bool(state and state[0])


async def build_erasures(conn: psycopg.AsyncConnection) -> Erasures:
    """The erasure list as a build applies it: the withdrawn users' events and prompt groups are left out."""
    found = await erasure_list(conn)
    withdrawn = sorted(found.withdrawn)
    events: set[str] = set()
    prompts: set[str] = set()
    if withdrawn:
        cur = await conn.execute("SELECT event_id::text, prompt_key FROM interactions WHERE user_id_hash = ANY(%s)",
                                 [withdrawn])
        for event_id, key in await cur.fetchall():
            events.add(event_id)
            prompts.add(key)
        cur = await conn.execute("SELECT event_id::text FROM feedback WHERE user_id_hash = ANY(%s)", [withdrawn])
        events.update(row[0] for row in await cur.fetchall())
    return Erasures(version=found.version, erased_users=len(found.erased), withdrawn_users=len(withdrawn),
                    events=frozenset(events), prompt_keys=frozenset(prompts))
