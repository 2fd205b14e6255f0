"""Where a round build reads (one REPEATABLE READ snapshot) and publishes (READ COMMITTED), on Postgres."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql

from flywheel.domain.quality import Judgement
from flywheel.domain.signals import SignalConfig
from flywheel.ports import BuilderBusy, Quarantine, RoundState, SourceRow
from store.db import connect, conninfo
from store.erasures import build_erasures
from store.eventstore import head
from store.roundrows import stream_rows
from store.rounds import current_round, load_quarantine
from store.signals import catch_up, checkpoint
from store.stats import multi_rated_judgements, signal_report
from store.unit_of_work import BUILD_LOCK, PostgresPublication, publication, round_state


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


class PostgresSnapshot:
    """The RoundSnapshot port: the caller's REPEATABLE READ transaction on `conn`, exported as `exported` so the
    report's connections see the same."""

    def __init__(self, conn: psycopg.AsyncConnection, exported: str, signals: SignalConfig) -> None:
        self.conn, self.exported, self.signals = conn, exported, signals

    async def head(self) -> int:
        return await head(self.conn)

    async def signals_checkpoint(self) -> int:
        return await checkpoint(self.conn)

    async def next_number(self) -> int:
        cur = await self.conn.execute("SELECT coalesce(max(number), 0) + 1 FROM rounds")
        return int((await cur.fetchone() or (1,))[0])

    async def current(self) -> RoundState | None:
        found = await current_round(self.conn)
        return None if found is None else round_state(found)

    async def quarantine(self) -> Quarantine:
        return dataclasses.replace(await load_quarantine(self.conn), erasures=await build_erasures(self.conn))

    def rows(self, watermark: int, signals: SignalConfig | None, *, copies: bool) -> AsyncIterator[list[SourceRow]]:
        return stream_rows(self.conn, watermark, signals or self.signals, derived_with=self.signals, copies=copies)

    async def judgements(self, watermark: int) -> dict[str, tuple[Judgement, ...]]:
        return await multi_rated_judgements(self.conn, watermark)

    async def report(self, watermark: int) -> dict[str, Any]:
        return await _report_in(self.conn, self.exported, watermark)


class PostgresRoundSource:
    """The RoundSource port on `conn` (in autocommit: the build opens its own transactions); `signals`: the rules
    the signals read model is derived with."""

    def __init__(self, conn: psycopg.AsyncConnection, signals: SignalConfig) -> None:
        self.conn, self.signals = conn, signals

    async def derive_signals(self) -> None:
        target = await head(self.conn)
        while (run := await catch_up(self.conn, self.signals, wait=True)) is not None and run.upto < target:
            pass

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """The build lock for this session: one build at a time; BuilderBusy when held. A rollback may land while
        it is held (on-call does not wait for a build): the publication sees it and holds the round."""
        cur = await self.conn.execute("SELECT pg_try_advisory_lock(%s)", [BUILD_LOCK])
        locked = await cur.fetchone()
        if not locked or not locked[0]:
            raise BuilderBusy("another round build is running")
        try:
            yield
        finally:
            # A connection broken mid-build has lost its session, and the lock with it.
            with contextlib.suppress(psycopg.OperationalError):
                await self.conn.execute("SELECT pg_advisory_unlock(%s)", [BUILD_LOCK])

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PostgresSnapshot]:
        async with self.conn.transaction():
            await self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur = await self.conn.execute("SELECT pg_export_snapshot()")
            yield PostgresSnapshot(self.conn, str((await cur.fetchone() or ("",))[0]), self.signals)

    def publication(self) -> contextlib.AbstractAsyncContextManager[PostgresPublication]:
        return publication(self.conn)
