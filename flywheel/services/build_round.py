"""BuildRound: cut the log at a watermark into a round directory and publish it atomically.

The rows stream from Postgres (store.roundrows, in one REPEATABLE READ snapshot) into the pure builder
(flywheel.domain.rounds.build), which runs in a process of its own (flywheel.runtime.builder_process;
forked when this one runs a single thread) fed chunks through a bounded queue, so reading and building use two
cores: memory stays flat whatever the round's size. The files are written under a hidden temporary directory; the
round becomes visible by a rename to round-NNNN inside the transaction that appends RoundPublished,
so a crash at any point leaves no round that the log does not know. Leftovers of a crashed build are
removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Full
from typing import Any

import psycopg
from psycopg import sql

from flywheel.domain.rounds import (
    Entry,
    Kind,
    Prepare,
    QuarantineItem,
    QuarantineList,
    Repeat,
    RoundConfig,
    RoundResult,
    Row,
    report_html,
    row_from_signal,
    rows_from_group,
)
from flywheel.domain.signals import SignalConfig
from flywheel.runtime import builder_process as process
from flywheel.runtime.collect import fewer_collections
from flywheel.services.rollback import ROUNDS_LOCK, Announce, point_current, round_dir
from store.db import connect, conninfo
from store.eventstore import head
from store.projections import DEFAULT_SIGNALS, record
from store.roundrows import SourceRow, stream_rows
from store.rounds import current_round, quarantine, round_published
from store.signals import catch_up, checkpoint
from store.stats import signal_report

_CHUNK = 500
# Chunks queued for the builder process: bounds memory and what the builder still has to do once the last row is
# read (with 8 it trailed the reader by ~0.26 s at 100k events, with 2 by ~0.11 s, the read itself a little longer).
_CHUNKS_IN_FLIGHT = 2
_KIND: dict[str, Kind] = {"pair": "dpo", "kto": "kto", "sft": "sft"}


class BuilderBusy(RuntimeError):
    """Another instance is building (or changing) rounds right now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    round: int
    path: Path
    content_hash: str
    watermark: int
    rows_in: int
    rows_out: int
    sliced_out: int  # rows left out because a rollback quarantined their slice


def in_slice(row: SourceRow, converted: Row, slices: list[dict[str, Any]]) -> bool:
    """Whether a row falls in a slice excluded by a rollback (all of a slice's filters must match)."""
    if row.occurred_at is None:
        raise ValueError("a row read without its time cannot be placed in a rollback slice")
    for s in slices:
        if "app_id" in s and converted.app_id != s["app_id"]:
            continue
        if "model_version" in s and converted.model_version != s["model_version"]:
            continue
        if "prompt_version" in s and converted.prompt_version != s["prompt_version"]:
            continue
        if "since" in s and row.occurred_at < datetime.fromisoformat(s["since"]):
            continue
        if "until" in s and row.occurred_at >= datetime.fromisoformat(s["until"]):
            continue
        return True
    return False


async def _rows(source: AsyncIterator[list[SourceRow]], slices: list[dict[str, Any]], sliced: list[int],
                prepare: Prepare) -> AsyncIterator[list[Entry]]:
    """The rows of `source` in chunks, through the first gates (`prepare`): what the builder process gets."""
    chunk: list[Entry] = []
    no_row: set[bytes] = set()  # copy keys of records that make no row (an undecided pair)
    async for batch in source:
        for row in batch:
            if not row.consent:  # unread (store.roundrows: only without slices)
                chunk.append(prepare.without_consent(_KIND[row.kind], row.copy_key, row.position))
                continue
            if row.data is None:  # an exact copy of an earlier record (store.roundrows: only without slices)
                if row.copy_key is None:
                    raise ValueError("a signal row without its data and without a copy key")
                if row.copy_key not in no_row:
                    chunk.append(Repeat(_KIND[row.kind], row.copy_key, row.position))
                continue
            if row.kind in _KIND and not slices:  # the common case: straight to a Prepared
                entry = prepare.signal(_KIND[row.kind], row.data, row.position, row.copy_key)
                if entry is not None:
                    chunk.append(entry)
                elif row.copy_key is not None:
                    no_row.add(row.copy_key)
                continue
            converted = ([r] if (r := row_from_signal(_KIND[row.kind], row.data, row.position,
                                                      copy_key=row.copy_key)) else []) \
                if row.kind in _KIND else rows_from_group(row.data, row.position)
            if not converted and row.copy_key is not None:
                no_row.add(row.copy_key)
            for c in converted:
                if slices and in_slice(row, c, slices):
                    sliced[0] += 1
                else:
                    chunk.append(prepare(c))
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _then(chunks: AsyncIterator[list[Entry]], read: Callable[[], None]) -> AsyncIterator[list[Entry]]:
    """`chunks`, calling `read` after the last (build_in_process reads them once the builder has started)."""
    async for chunk in chunks:
        yield chunk
    read()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a spawned process starts: this process's main module out of multiprocessing's sight, so the child
    imports what it runs and not that module again (the builder needs nothing of the CLI, whose import with its
    settings and pydantic took 0.7 s of the builder's start)."""
    main = sys.modules["__main__"]
    saved: dict[str, Any] = {name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _start_method() -> str:
    """Fork when this process runs no other thread: the builder is then at work within milliseconds, every module
    already imported (a fresh interpreter took 0.25 s of a 2.5 s build at 100k events). Spawn otherwise: a fork
    would copy the locks other threads may hold at that moment."""
    return "fork" if threading.active_count() == 1 else "spawn"


async def build_in_process(chunks: AsyncIterator[list[Entry]], *args: Any, **kwargs: Any) -> RoundResult:
    """`build(rows, *args, **kwargs)` in a builder process (flywheel.runtime.builder_process) fed by this one."""
    forked = _start_method() == "fork"
    ctx = multiprocessing.get_context("fork") if forked else multiprocessing.get_context("spawn")
    queue: Queue[list[Any] | None] = ctx.Queue(maxsize=_CHUNKS_IN_FLIGHT)
    results, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=process.main, args=(queue, child_end, os.getpid(), args, kwargs),
                        name="round-builder", daemon=True)
    with contextlib.nullcontext() if forked else _main_module_hidden():
        child.start()
    child_end.close()

    def put(chunk: list[Entry] | None) -> bool:
        """False once the builder takes no more rows (it failed, or died: receive() tells which)."""
        packed = None if chunk is None else process.pack(chunk)
        while not results.poll():
            try:
                queue.put(packed, timeout=1.0)
                return True
            except Full:
                if not child.is_alive():
                    return False
        return False

    def receive() -> tuple[str, Any]:
        while not results.poll(1.0):  # also true at end of file: the builder died without a word
            pass
        try:
            return results.recv()
        except EOFError:
            child.join()
            raise RuntimeError(f"the round builder process died (exit code {child.exitcode})") from None

    try:
        async for chunk in chunks:
            if not await asyncio.to_thread(put, chunk):
                break
        else:
            await asyncio.to_thread(put, None)
        status, value = await asyncio.to_thread(receive)
    except BaseException:
        child.kill()
        raise
    finally:
        await asyncio.to_thread(child.join)
        results.close()
        queue.close()
        queue.cancel_join_thread()  # a killed child never reads what is left: do not wait to flush it
    if status == "error":
        raise value
    return value


async def _report_in(conn: psycopg.AsyncConnection, snapshot: str, upto: int) -> dict[str, Any]:
    """signal_report as of `upto` on two connections of its own to the same database (the signals' figures on one,
    the feedback's on the other, at once: the report is what a build waits for last), in the exported `snapshot`
    (so they see what the build's transaction sees)."""
    async with contextlib.AsyncExitStack() as stack:
        signals, feedback = [await stack.enter_async_context(await connect(conninfo(conn))) for _ in range(2)]
        for other in (signals, feedback):
            await stack.enter_async_context(other.transaction())
            await other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await other.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        return await signal_report(signals, upto=upto, feedback_conn=feedback)


@contextlib.asynccontextmanager
async def _rounds_lock(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    """The rounds lock for this session (`conn` in autocommit): taken before the build's snapshot, so nothing the
    lock guards (rounds, rollbacks) changes between the snapshot and the publication; BuilderBusy when held."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [ROUNDS_LOCK])
    locked = await cur.fetchone()
    if not locked or not locked[0]:
        raise BuilderBusy("another round build or rollback is running")
    try:
        yield
    finally:
        # A connection broken mid-build has lost its session, and the lock with it.
        with contextlib.suppress(psycopg.OperationalError):
            await conn.execute("SELECT pg_advisory_unlock(%s)", [ROUNDS_LOCK])


async def _cut(
    conn: psycopg.AsyncConnection, tmp: Path, config: RoundConfig, qlist: QuarantineList,
    slices: list[dict[str, Any]], *, watermark: int, parent: dict[str, Any] | None, number: int,
    signals: SignalConfig | None, announce: Announce | None,
) -> tuple[RoundResult, dict[str, Any], int]:
    """The round's files under `tmp`, its report's figures and the rows left out by rollback slices, all from the
    caller's REPEATABLE READ snapshot."""
    sliced = [0]
    # Exact copies come unread unless a rollback slice may leave out the row they copy.
    chunks = _rows(stream_rows(conn, watermark, signals or SignalConfig(), copies=not slices), slices,
                   sliced, Prepare(config))
    # The report's aggregates run in this snapshot on a connection of their own once every row is read,
    # while the builder process works through the last of them and this one would wait; so does the
    # announcer's getting ready (kafka-python's import: while rows were read, it took this process's core
    # from them).
    cur = await conn.execute("SELECT pg_export_snapshot()")
    snapshot = str((await cur.fetchone() or ("",))[0])
    report: asyncio.Task[dict[str, Any]] | None = None

    def read() -> None:
        nonlocal report
        report = asyncio.create_task(_report_in(conn, snapshot, watermark))
        if (prepare := getattr(announce, "prepare", None)) is not None:
            prepare()

    try:
        with fewer_collections():
            result = await build_in_process(
                _then(chunks, read), config, qlist, tmp,
                watermark=watermark, parent=None if parent is None else str(parent["number"]),
                round_number=number)
    except BaseException:
        if report is not None:
            report.cancel()
            with contextlib.suppress(BaseException):
                await report
        raise
    audits = await (report or _report_in(conn, snapshot, watermark))
    return result, audits, sliced[0]


async def build_round(
    conn: psycopg.AsyncConnection, root: Path, config: RoundConfig, *, watermark: int | None = None,
    signals: SignalConfig | None = None, announce: Announce | None = None,
) -> Published:
    """Build and publish the next round from the log up to `watermark`.

    Without a watermark, the signals read model is first brought up to the head of the log (the workers'
    projector normally has it there already) and the round is cut where it stands: its rows are then read,
    not derived again (store.roundrows)."""
    root.mkdir(parents=True, exist_ok=True)
    if watermark is None:
        target = await head(conn)
        while (run := await catch_up(conn, DEFAULT_SIGNALS, wait=True)) is not None and run.upto < target:
            pass
    tmp: Path | None = None
    final: Path | None = None
    async with _rounds_lock(conn):
        try:
            # The rows come from one REPEATABLE READ snapshot; the round is published afterwards in a READ COMMITTED
            # transaction, whose append numbers RoundPublished from the head as it is then (ingest and other writers
            # append meanwhile). The lock is held across both, so no other build or on-call change comes between.
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                newest = await head(conn)
                derived = await checkpoint(conn)  # how far the signals read model is (this snapshot's)
                watermark = derived if watermark is None else watermark
                if not 0 < watermark <= newest:
                    raise ValueError(f"watermark {watermark} is outside the log (1..{newest})")
                cur = await conn.execute("SELECT coalesce(max(number), 0) + 1 FROM rounds")
                number = int((await cur.fetchone() or (1,))[0])
                parent = await current_round(conn)
                version, items, slices = await quarantine(conn)
                qlist = QuarantineList(version=version, items=tuple(
                    QuarantineItem(item_id=i, list_name=n, prompt=p, answer=a) for i, n, p, a in items))

                final = round_dir(root, number)
                for stale in [*root.glob(".building-*"), final]:
                    shutil.rmtree(stale, ignore_errors=True)  # a crashed build's leftovers: never published
                tmp = root / f".building-{number:04d}-{uuid.uuid4().hex[:8]}"
                result, audits, sliced_out = await _cut(conn, tmp, config, qlist, slices, watermark=watermark,
                                                        parent=parent, number=number, signals=signals,
                                                        announce=announce)
            if derived != watermark:  # an older watermark: the round's rows were derived anew, the audits' not
                audits["signals_checkpoint"] = derived
            (tmp / "report.html").write_text(report_html(result.manifest, audits))
            sources, processing = result.manifest["data_sources"], result.manifest["sample_processing"]
            summary = {"rows": sources["rows_by_kind"], "splits": processing["splits"],
                       "removed": processing["removed"], "apps": sources["apps"],
                       "model_versions": sources["model_versions"], "rows_in": result.rows_in,
                       "rows_out": result.rows_out, "sliced_out": sliced_out,
                       "files": {k: result.files[k] for k in sorted(result.files)}}
            async with conn.transaction():
                await record(conn, [round_published({
                    "round": number, "path": str(final.resolve()), "content_hash": result.content_hash,
                    "watermark": watermark, "parent": None if parent is None else parent["number"],
                    "quarantine_version": version, "config_version": config.version(), "summary": summary})])
                tmp.rename(final)  # visible from here on; the commit (leaving this block) makes it official
        except BaseException:
            for path in (tmp, final):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            raise
        point_current(root, number)
    if announce:
        announce({"type": "round_published", "round": number, "path": str(final.resolve()),
                  "content_hash": result.content_hash, "watermark": watermark})
    return Published(round=number, path=final, content_hash=result.content_hash, watermark=watermark,
                     rows_in=result.rows_in, rows_out=result.rows_out, sliced_out=sliced_out)

