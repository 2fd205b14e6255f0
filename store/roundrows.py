"""What a round is cut from: the signals of the log up to a watermark, and candidate groups.

A round depends only on the log up to its watermark, never on how far the signals projector has got or
on events after the watermark. When the projector's checkpoint is the watermark, the signals read model
is exactly that (store.signals derives each group from the log up to its checkpoint), so the rows are read
from it in derive's order. At any other watermark they are derived afresh per prompt group from the
interactions and feedback at or before it (derive is pure): the same rows, slower. Either way rows stream
out in batches (a streaming read in the build's snapshot, server-side cursors): memory does not grow with
the size of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql

from flywheel.domain.signals import PreferencePair, PromptGroup, SignalConfig, derive_group
from flywheel.ports import SourceRow
from store.db import conninfo
from store.signals import checkpoint, load_groups

_GROUPS_PER_LOAD = 500


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


async def _rederiving(conn: psycopg.AsyncConnection) -> bool:
    """Whether an erasure left prompt groups for the projector to derive again (their rows are not the log's yet)."""
    cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM rederive)")
    row = await cur.fetchone()
    return bool(row and row[0])


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
    conn: psycopg.AsyncConnection, watermark: int, config: SignalConfig, *, derived_with: SignalConfig,
    copies: bool = False,
) -> AsyncIterator[list[SourceRow]]:
    """Every pair, KTO label and SFT sample of the log at `watermark`, by prompt group, then every candidate
    group generated (and selected) by then, in batches (a row at a time through async generators cost as much as
    the rest of the read). Call inside a REPEATABLE READ transaction (the cursors are server-side, and the read
    model must not move between the checkpoint check and the read).

    With `copies`, exact copies of an earlier row come without their data (SourceRow.copy_key): a caller that
    passes every row on (none left out between, e.g. by a rollback slice) can tell the gates so. The signals read
    model is read as it stands when it was derived with `config` (`derived_with`) up to `watermark`, else the rows
    are derived anew."""
    at = await watermark_time(conn, watermark)
    if config == derived_with and await checkpoint(conn) == watermark and not await _rederiving(conn):
        signals = _read_signals(conn, at, copies=copies)
    else:
        signals = _derive_signals(conn, watermark, config, at)
    async for batch in signals:
        yield batch
    async with conn.cursor(name="round_candidate_groups") as groups_cur:
        await groups_cur.execute(GROUPS_QUERY, {"w": watermark})
        while rows := await groups_cur.fetchmany(_GROUPS_PER_LOAD):
            yield [SourceRow("group", {"group_id": gid, "prompt_key": key, "model_version": model,
                                       "generator": generator, "prompt": prompt, "candidates": candidates,
                                       "sampling": sampling, "selection": selection, "sample_id": sample,
                                       "app_id": app, "tags": tags}, pos, occurred)
                   for (gid, pos, occurred, key, model, generator, prompt, candidates, sampling, selection, sample,
                        app, tags) in rows]


def signals_query(*, copies: bool) -> str:
    """The query a round reads the signals read model with (bench/rounds.py copies it raw as a baseline)."""
    # Tied pairs never become training rows (flywheel.domain.rounds.row_from_signal): not worth reading. With
    # copies, nor is
    # the data of a record without consent that would be a row (any but a pair not accepted): consent removes it;
    # nor are the times, which only rollback slices need.
    data = "CASE WHEN consent OR kind = 'pair' AND status IS DISTINCT FROM 'accepted' THEN data::text END" \
        if copies else "data::text"
    return (f"SELECT kind, {data}, position, {'NULL::timestamptz, copy_key' if copies else 'occurred_at'} FROM signals"
            " WHERE kind = ANY('{pair,kto,sft}') AND NOT (kind = 'pair' AND tie) ORDER BY prompt_key, sort_key")


async def _read_signals(conn: psycopg.AsyncConnection, at: datetime | None, *, copies: bool = False
                        ) -> AsyncIterator[list[SourceRow]]:
    """The training records of the signals read model, in the order _derive_signals gives them.

    With `copies`, every record comes with its copy key (store.signals.copy_key, kept by the projector), and a
    record whose key came before (an exact copy: most of a log's dedup removals, as hot prompts repeat canned
    answers) comes without its data: it is neither decoded, nor converted, nor judged again. So does a record
    without consent (SourceRow.consent)."""
    seen: set[bytes] = set()  # with copies: 16 bytes per distinct record, the one thing here growing with the log
    async for batch in _fetched(conn, signals_query(copies=copies)):
        rows = []
        for kind, data, position, occurred_at, *key in batch:
            copy_key = key[0] if key else None
            if copy_key is not None:
                if copy_key in seen:
                    rows.append(SourceRow(kind, None, position, occurred_at, copy_key))
                    continue
                seen.add(copy_key)
            if data is None:
                rows.append(SourceRow(kind, None, position, occurred_at, copy_key, consent=False))
                continue
            record = orjson.loads(data)
            rows.append(SourceRow(kind, _decided_json(record, at) if kind == "pair" else record, position,
                                  occurred_at, copy_key))
        yield rows


_FETCH_ROWS = 1000  # rows a batch of the fetching thread holds; a few batches are in flight
_BATCHES_IN_FLIGHT = 4


async def _fetched(conn: psycopg.AsyncConnection, query: str) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The rows of `query` in batches, as `conn`'s transaction sees them, fetched by a thread of their own on a
    second connection in that transaction's snapshot.

    A round reads most of a log's signal rows: psycopg's async row-by-row reads cost more CPU than the rest of
    the read together (at 300k events 1.4 s, where a blocking connection streaming the rows, libpq's chunked
    rows, takes 0.56 s), and Postgres computes the next rows while this process works through the ones before."""
    cur = await conn.execute("SELECT pg_export_snapshot()")
    snapshot = str((await cur.fetchone() or ("",))[0])
    batches: queue.Queue[list[tuple[Any, ...]] | BaseException | None] = queue.Queue(maxsize=_BATCHES_IN_FLIGHT)
    stop = threading.Event()

    def put(item: list[tuple[Any, ...]] | BaseException | None) -> None:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    def fetch() -> None:
        try:
            with psycopg.connect(conninfo(conn)) as other:
                other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                other.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                # In the primary key's order (prompt_key first) with each group sorted as it comes (an incremental
                # sort), not the whole read model sorted before the first row is sent: Postgres computes the rows
                # while the build works through the ones before (at 300k events 3.2 s of an 8.2 s build went by
                # before the first row). The order is the same: the sort key is unique within a prompt group.
                other.execute("SET LOCAL enable_sort = off")
                batch: list[tuple[Any, ...]] = []
                for row in other.cursor().stream(query, size=_FETCH_ROWS):
                    batch.append(row)
                    if len(batch) == _FETCH_ROWS:
                        put(batch)
                        batch = []
                put(batch)
                put(None)
        except _Stopped:
            pass
        except BaseException as e:  # raised where the rows are read
            with contextlib.suppress(_Stopped):
                put(e)

    def get() -> list[tuple[Any, ...]] | BaseException | None:
        while True:
            try:
                return batches.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set():  # the reader was cancelled while it waited here
                    raise _Stopped from None
                if not thread.is_alive():
                    try:
                        return batches.get_nowait()
                    except queue.Empty:
                        raise RuntimeError("the thread fetching the round's rows ended without a word") from None

    thread = threading.Thread(target=fetch, name="round-rows", daemon=True)
    thread.start()
    try:
        while (item := await asyncio.to_thread(get)) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await asyncio.to_thread(thread.join)


class _Stopped(Exception):
    """The reader of the fetched rows has stopped: the fetching thread ends."""


async def _derive_signals(
    conn: psycopg.AsyncConnection, watermark: int, config: SignalConfig, at: datetime | None
) -> AsyncIterator[list[SourceRow]]:
    """Derive the training records of every prompt group from the log up to `watermark`."""
    async with conn.cursor(name="round_groups") as keys_cur, conn.cursor() as cur:
        keys_cur.itersize = _GROUPS_PER_LOAD
        await keys_cur.execute("SELECT DISTINCT prompt_key FROM interactions WHERE position <= %s ORDER BY 1",
                               [watermark])
        while keys := [row[0] for row in await keys_cur.fetchmany(_GROUPS_PER_LOAD)]:
            groups = await load_groups(cur, keys, upto=watermark)
            for key in keys:
                g = PromptGroup(*groups[key], config)
                signals = derive_group(g)
                pairs = [_decided(p, at) for p in signals.pairs]
                yield [SourceRow(kind, orjson.loads(orjson.dumps(record)),
                                 *g.newest(record.source_event_ids))
                       for kind, records in (("pair", pairs), ("kto", signals.kto_labels), ("sft", signals.sft_samples))
                       for record in records]
