"""Whose key seals the users' words that the system's own events carry (store.keys.SYSTEM_PERSONAL).

A sample's case is sealed under the key of a user who wrote its conversation (the newest such interaction: a prompt
group's text is the same for all its users), so it reads while that user is not erased. What follows a case keeps
its lineage: the candidates generated for it are sealed under the case's user, a selection under its group's.
Words from no user (a group of anonymous interactions, a group made without a sample) stay in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import psycopg

from flywheel.domain.events import CandidatesGenerated, CandidatesSelected, HardCasesSampled
from flywheel.domain.log import NewEvent
from store import keys


async def seal(conn: psycopg.AsyncConnection, rows: Sequence[NewEvent]) -> tuple[list[NewEvent], keys.KeyRing]:
    """The log form of `rows`, each system event's users' words sealed, and the keys that sealed them, held FOR
    SHARE until the caller's transaction ends (an erasure waits, or has already shredded the key: the words are
    then dropped and the part marked erased). Call before taking the log's lock, as store.keys.load says."""
    samples = {e.event_id: [c["prompt_key"] for c in e.data["payload"]["chosen"]]
               for e in rows if e.type == HardCasesSampled.TYPE}
    generated = [e for e in rows if e.type == CandidatesGenerated.TYPE]
    selected = [e for e in rows if e.type == CandidatesSelected.TYPE]
    if not (samples or generated or selected):
        return list(rows), keys.KeyRing()
    users: dict[str, dict[str, str | None]] = {}
    async with conn.cursor() as cur:
        prompts = sorted({k for ks in samples.values() for k in ks})
        if prompts:
            await cur.execute(
                "SELECT DISTINCT ON (prompt_key) prompt_key, user_id_hash FROM interactions"
                " WHERE prompt_key = ANY(%s) ORDER BY prompt_key, user_id_hash IS NULL, position DESC", [prompts])
            by_prompt: dict[str, str | None] = dict(await cur.fetchall())
            users.update({event_id: {k: by_prompt.get(k) for k in ks} for event_id, ks in samples.items()})
        if generated:
            await cur.execute(
                "SELECT x.event_id, c ->> 'sealed_for' FROM unnest(%s::text[], %s::uuid[], %s::text[])"
                " x(event_id, sample_id, prompt_key) JOIN events e ON e.event_id = x.sample_id"
                " CROSS JOIN jsonb_array_elements(e.data -> 'payload' -> 'chosen') c"
                " WHERE c ->> 'prompt_key' = x.prompt_key",
                [[e.event_id for e in generated], [e.data["sample_id"] for e in generated],
                 [e.data["prompt_key"] for e in generated]])
            users.update({event_id: {event_id: user} for event_id, user in await cur.fetchall()})
        if selected:
            await cur.execute(
                "SELECT x.event_id, e.data -> 'payload' ->> 'sealed_for' FROM unnest(%s::text[], %s::uuid[])"
                " x(event_id, group_id) JOIN events e ON e.event_id = x.group_id",
                [[e.event_id for e in selected], [e.data["group_id"] for e in selected]])
            users.update({event_id: {event_id: user} for event_id, user in await cur.fetchall()})
    # create: a user projected without passing ingest (a rebuilt read model's, a test's) has no key yet.
    ring = await keys.load(conn, [u for found in users.values() for u in found.values()], create=True)
    return [replace(e, data=ring.seal_system(e.data, users[e.event_id])) if e.event_id in users else e
            for e in rows], ring
