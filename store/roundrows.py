"""What a round is cut from: the signals of the log up to a watermark, and candidate groups.

A round depends only on the log up to its watermark, never on how far the signals projector has got or
on events after the watermark. When the projector's checkpoint is the watermark, the signals read model
is exactly that (store.signals derives each group from the log up to its checkpoint), so the rows are read
from it in derive's order. At any other watermark they are derived afresh per prompt group from the
interactions and feedback at or before it (derive is pure): the same rows, slower. Either way rows stream
out (COPY, server-side cursors): memory does not grow with the size of the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
import psycopg

from flywheel.signals import PreferencePair, SignalConfig, derive
from store.projections import DEFAULT_SIGNALS
from store.signals import checkpoint, load_groups, newest_sources

_GROUPS_PER_LOAD = 500


@dataclass(frozen=True, slots=True)
class SourceRow:
    kind: str  # pair | kto | sft (signal records) | group (a candidate group with its selection)
    # The record as JSON (flywheel.signals dataclasses), or the candidate group; None for an exact copy (see
    # `copy_key`) of an earlier row, which the read leaves unread.
    data: dict[str, Any] | None
    position: int  # the newest event the row was derived from
    occurred_at: datetime  # that event's time (rollback slices select on it)
    # With `copies`, what an exact copy shares with the first row of its kind (which comes with data; the
    # copies with None): the same kind, consent, status and tags and the same body, so row_from_signal makes
    # the same of it, every gate up to dedup treats it as that row, and dedup then removes it.
    copy_key: bytes | None = None


# The candidate groups a round reads, generated (and selected) by watermark %(w)s.
GROUPS_QUERY = (
    "SELECT g.group_id::text, g.position, e.occurred_at, g.prompt_key, g.model_version, g.generator,"
    " g.prompt, g.candidates, g.sampling, CASE WHEN g.selected_position <= %(w)s THEN g.selection END,"
    " g.sample_id::text, g.app_id, g.tags"
    " FROM candidate_groups g JOIN events e ON e.position = g.position"
    " WHERE g.position <= %(w)s ORDER BY g.position"
)


async def watermark_time(conn: psycopg.AsyncConnection, watermark: int) -> datetime | None:
    cur = await conn.execute("SELECT occurred_at FROM events WHERE position = %s", [watermark])
    row = await cur.fetchone()
    return row[0] if row else None


def _decided(pair: PreferencePair, at: datetime | None) -> PreferencePair:
    """A pending regeneration pair with nothing contrary before the watermark's time counts as accepted."""
    if pair.status == "pending" and at is not None and pair.decided_after is not None and pair.decided_after <= at:
        return replace(pair, status="accepted")
    return pair


def _decided_json(data: dict[str, Any], at: datetime | None) -> dict[str, Any]:
    """_decided on a pair as the read model holds it (JSON)."""
    decided_after = data.get("decided_after")
    if data.get("status") == "pending" and at is not None and decided_after is not None \
            and datetime.fromisoformat(decided_after) <= at:
        data["status"] = "accepted"
    return data


async def stream_rows(
    conn: psycopg.AsyncConnection, watermark: int, config: SignalConfig, *, copies: bool = False
) -> AsyncIterator[SourceRow]:
    """Every pair, KTO label and SFT sample of the log at `watermark`, by prompt group, then every candidate
    group generated (and selected) by then. Call inside a REPEATABLE READ transaction (the cursors are
    server-side, and the read model must not move between the checkpoint check and the read).

    With `copies`, exact copies of an earlier row come without their data (SourceRow.copy_key): a caller that
    passes every row on (none left out between, e.g. by a rollback slice) can tell the gates so."""
    at = await watermark_time(conn, watermark)
    if config == DEFAULT_SIGNALS and await checkpoint(conn) == watermark:
        signals = _read_signals(conn, at, copies=copies)
    else:
        signals = _derive_signals(conn, watermark, config, at)
    async for row in signals:
        yield row
    async with conn.cursor(name="round_candidate_groups") as groups_cur:
        await groups_cur.execute(GROUPS_QUERY, {"w": watermark})
        async for (gid, pos, occurred, key, model, generator, prompt, candidates, sampling, selection, sample,
                   app, tags) in groups_cur:
            yield SourceRow("group", {"group_id": gid, "prompt_key": key, "model_version": model,
                                      "generator": generator, "prompt": prompt, "candidates": candidates,
                                      "sampling": sampling, "selection": selection, "sample_id": sample,
                                      "app_id": app, "tags": tags}, pos, occurred)


# What makes two signal records the same to every round gate up to dedup, and equal in what row_from_signal
# makes of them: kind, consent, status (and when a pending pair is decided), tags, and every value its body
# is made from. jsonb text is canonical (keys sorted, no whitespace): equal values give equal text.
_COPY_KEY = (
    "decode(md5(jsonb_build_array(kind, consent, status,"
    " CASE WHEN status = 'pending' THEN data -> 'decided_after' END, data -> 'tags',"
    " CASE kind WHEN 'pair' THEN jsonb_build_array(data -> 'prompt', data -> 'chosen', data -> 'rejected')"
    " WHEN 'kto' THEN jsonb_build_array(data -> 'prompt', data -> 'completion', data -> 'desirable')"
    " ELSE data -> 'messages' END)::text), 'hex')"
)


def signals_query(*, copies: bool) -> str:
    """The query a round reads the signals read model with (bench/rounds.py copies it raw as a baseline)."""
    # Tied pairs never become training rows (flywheel.rounds.row_from_signal): not worth reading.
    return (f"SELECT kind, data::text, position, occurred_at{', ' + _COPY_KEY if copies else ''} FROM signals"
            " WHERE kind = ANY('{pair,kto,sft}') AND NOT (kind = 'pair' AND (data -> 'tie') = 'true')"
            " ORDER BY prompt_key, sort_key")


async def _read_signals(conn: psycopg.AsyncConnection, at: datetime | None, *, copies: bool = False
                        ) -> AsyncIterator[SourceRow]:
    """The training records of the signals read model, in the order _derive_signals gives them.

    With `copies`, every record comes with its copy key (Postgres hashes it), and a record whose key came before
    (an exact copy: most of a log's dedup removals, as hot prompts repeat canned answers) comes without its data:
    it is neither decoded, nor converted, nor judged again."""
    # COPY, not a server-side cursor: Postgres streams the rows (sorted by parallel workers) while this
    # process decodes them, instead of computing each batch while this process waits for it (at 1M events
    # 8 s instead of 15 s).
    query = signals_query(copies=copies)
    seen: set[bytes] = set()  # with copies: 16 bytes per distinct record, the one thing here growing with the log
    # In the primary key's order (prompt_key first) with each group sorted as it comes (an incremental sort), not
    # the whole read model sorted before the first row is sent: Postgres computes the rows (the JSON text, the copy
    # keys) while this process and the builder's work through the ones before, instead of all of them first (at
    # 300k events 3.2 s of an 8.2 s build went by before the first row). The order is the same: the sort key is
    # unique within a prompt group. Only for this query, the rest of the build's transaction plans as it would.
    cur = await conn.execute("SELECT current_setting('enable_sort'), set_config('enable_sort', 'off', true)")
    enable_sort = str((await cur.fetchone() or ("on",))[0])
    async with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
        copy.set_types(["text", "text", "int8", "timestamptz", *(["bytea"] if copies else [])])
        async for kind, data, position, occurred_at, *key in copy.rows():
            copy_key = key[0] if key else None
            if copy_key is not None:
                if copy_key in seen:
                    yield SourceRow(kind, None, position, occurred_at, copy_key)
                    continue
                seen.add(copy_key)
            record = orjson.loads(data)
            yield SourceRow(kind, _decided_json(record, at) if kind == "pair" else record, position, occurred_at,
                            copy_key)
    await conn.execute("SELECT set_config('enable_sort', %s, true)", [enable_sort])


async def _derive_signals(
    conn: psycopg.AsyncConnection, watermark: int, config: SignalConfig, at: datetime | None
) -> AsyncIterator[SourceRow]:
    """Derive the training records of every prompt group from the log up to `watermark`."""
    async with conn.cursor(name="round_groups") as keys_cur, conn.cursor() as cur:
        keys_cur.itersize = _GROUPS_PER_LOAD
        await keys_cur.execute("SELECT DISTINCT prompt_key FROM interactions WHERE position <= %s ORDER BY 1",
                               [watermark])
        while keys := [row[0] for row in await keys_cur.fetchmany(_GROUPS_PER_LOAD)]:
            groups = await load_groups(cur, keys, upto=watermark)
            for key in keys:
                interactions, feedback = groups[key]
                sources = newest_sources(interactions, feedback)
                signals = derive(interactions, feedback, config)
                pairs = [_decided(p, at) for p in signals.pairs]
                for kind, records in (("pair", pairs), ("kto", signals.kto_labels), ("sft", signals.sft_samples)):
                    for record in records:
                        newest = max(sources[e] for e in record.source_event_ids)
                        yield SourceRow(kind, orjson.loads(orjson.dumps(record)), *newest)
