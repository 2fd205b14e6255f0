"""What a round is cut from: signals derived afresh from the log up to a watermark, and candidate groups.

Signals are re-derived per prompt group from the interactions and feedback at or before the watermark
(derive is pure), so a round depends only on the log up to its watermark, never on how far the signals
projector has got or on events after the watermark. Rows stream out group by group through a
server-side cursor: memory does not grow with the size of the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
import psycopg

from flywheel.signals import PreferencePair, SignalConfig, derive
from store.signals import load_groups

_GROUPS_PER_LOAD = 500


@dataclass(frozen=True, slots=True)
class SourceRow:
    kind: str  # pair | kto | sft (signal records) | group (a candidate group with its selection)
    data: dict[str, Any]  # the record as JSON (flywheel.signals dataclasses), or the candidate group
    position: int  # the newest event the row was derived from
    occurred_at: datetime  # that event's time (rollback slices select on it)


async def watermark_time(conn: psycopg.AsyncConnection, watermark: int) -> datetime | None:
    cur = await conn.execute("SELECT occurred_at FROM events WHERE position = %s", [watermark])
    row = await cur.fetchone()
    return row[0] if row else None


def _decided(pair: PreferencePair, at: datetime | None) -> PreferencePair:
    """A pending regeneration pair with nothing contrary before the watermark's time counts as accepted."""
    if pair.status == "pending" and at is not None and pair.decided_after is not None and pair.decided_after <= at:
        return replace(pair, status="accepted")
    return pair


async def stream_rows(
    conn: psycopg.AsyncConnection, watermark: int, config: SignalConfig
) -> AsyncIterator[SourceRow]:
    """Every pair, KTO label and SFT sample of the log at `watermark`, by prompt group, then every candidate
    group generated (and selected) by then. Call inside a transaction (the cursor is server-side)."""
    at = await watermark_time(conn, watermark)
    async with conn.cursor(name="round_groups") as keys_cur, conn.cursor() as cur:
        keys_cur.itersize = _GROUPS_PER_LOAD
        await keys_cur.execute("SELECT DISTINCT prompt_key FROM interactions WHERE position <= %s ORDER BY 1",
                               [watermark])
        while keys := [row[0] for row in await keys_cur.fetchmany(_GROUPS_PER_LOAD)]:
            groups = await load_groups(cur, keys, upto=watermark)
            for key in keys:
                interactions, feedback = groups[key]
                positions = {i.event_id: (i.position, i.occurred_at) for i in interactions}
                positions.update({f.event_id: (f.position, f.occurred_at) for f in feedback})
                signals = derive(interactions, feedback, config)
                pairs = [_decided(p, at) for p in signals.pairs]
                for kind, records in (("pair", pairs), ("kto", signals.kto_labels), ("sft", signals.sft_samples)):
                    for record in records:
                        newest = max(positions[e] for e in record.source_event_ids)
                        yield SourceRow(kind, orjson.loads(orjson.dumps(record)), *newest)
    async with conn.cursor(name="round_candidate_groups") as groups_cur:
        await groups_cur.execute(
            "SELECT g.group_id::text, g.position, e.occurred_at, g.prompt_key, g.model_version, g.generator,"
            " g.prompt, g.candidates, g.sampling, CASE WHEN g.selected_position <= %(w)s THEN g.selection END,"
            " g.sample_id::text, g.app_id, g.tags"
            " FROM candidate_groups g JOIN events e ON e.position = g.position"
            " WHERE g.position <= %(w)s ORDER BY g.position",
            {"w": watermark},
        )
        async for (gid, pos, occurred, key, model, generator, prompt, candidates, sampling, selection, sample,
                   app, tags) in groups_cur:
            yield SourceRow("group", {"group_id": gid, "prompt_key": key, "model_version": model,
                                      "generator": generator, "prompt": prompt, "candidates": candidates,
                                      "sampling": sampling, "selection": selection, "sample_id": sample,
                                      "app_id": app, "tags": tags}, pos, occurred)
