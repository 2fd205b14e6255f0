"""One append path for every writer of the log, under concurrent writers (real Postgres): ingest batches,
round builds, rollbacks and nightly run records append at once, and positions stay unique and gap-free."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flywheel.bootstrap import round_ops
from flywheel.domain.commands import BuildRound, RestoreRound, RollBackRound
from flywheel.domain.events import NightlyRunFinished
from flywheel.domain.signals import SignalConfig
from flywheel.ports import BuilderBusy
from flywheel.settings import Endpoints
from flywheel.simulator import generate
from store.db import connect, connect_sync
from store.eventstore import SnapshotAppend, head
from store.ingest import Incoming, decode_message, ingest_batch
from store.projections import check, record
from store.signals import catch_up
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store

pytestmark = pytest.mark.integration


def _ok_run(run_id: str) -> NightlyRunFinished:
    return NightlyRunFinished(run_id=run_id, started_at="2026-12-01T03:00:00+00:00", status="ok", steps={}, error=None)


def _run_record(url: str) -> None:
    """A nightly run record appended and committed by another connection, from another thread, now."""
    in_store(url, lambda conn: record(conn, [_ok_run(str(uuid.uuid4()))]))


def positions(url: str) -> list[int]:
    with connect_sync(url) as conn:
        return [int(p) for (p,) in conn.execute("SELECT position FROM events ORDER BY position").fetchall()]


async def _nothing(_: Any) -> None:
    return None


def test_an_append_from_a_snapshot_transaction_is_refused_before_it_writes(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest_all(url, [m.value for m in generate(50, seed=3) if m.expected_reason is None], [50])

    async def go() -> None:
        conn = await connect(url, autocommit=True)
        try:
            with pytest.raises(SnapshotAppend, match="READ COMMITTED"):
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    seen = await head(conn)
                    await asyncio.to_thread(_run_record, url)  # the head moves past this snapshot's
                    assert await head(conn) == seen
                    await record(conn, [_ok_run("r")])
        finally:
            await conn.close()

    asyncio.run(go())
    assert positions(url) == list(range(1, len(positions(url)) + 1))


class _AppendsWhileRead:
    """An announcer whose prepare() (called by a build once every row is read, inside its snapshot) has another
    writer append and commit: the build must still publish, after that event."""

    def __init__(self, url: str) -> None:
        self.url, self.head_then, self.announced = url, 0, []

    def prepare(self) -> None:
        thread = threading.Thread(target=_run_record, args=(self.url,))
        thread.start()
        thread.join()
        self.head_then = positions(self.url)[-1]

    def __call__(self, message: dict[str, Any]) -> None:
        self.announced.append(message)


def test_a_build_publishes_after_events_appended_during_its_snapshot(endpoints: Endpoints, tmp_path: Path) -> None:
    url = endpoints.database_url
    ingest_all(url, [m.value for m in generate(800, seed=5) if m.expected_reason is None], [200])
    announce = _AppendsWhileRead(url)

    published = in_store(url, lambda conn: round_ops(conn, tmp_path, announce=announce).build(BuildRound()))

    assert announce.head_then > published.watermark  # another writer appended while the build read
    with connect_sync(url) as conn:
        at = conn.execute("SELECT position FROM events WHERE type = 'round_published'").fetchone()
    assert at == (announce.head_then + 1,)
    assert positions(url) == list(range(1, announce.head_then + 2))
    assert announce.announced[0]["round"] == published.round == 1
    again = in_store(url, lambda conn: round_ops(conn, tmp_path).build(BuildRound(watermark=published.watermark)))
    assert again.content_hash == published.content_hash


def test_ingest_builds_rollbacks_and_run_records_append_at_once(endpoints: Endpoints, tmp_path: Path) -> None:
    url = endpoints.database_url
    values = [m.value for m in generate(4000, seed=8) if m.expected_reason is None]
    ingest_all(url, values[:1000], [250])
    done = asyncio.Event()
    tally: dict[str, int] = {"batches": 0, "builds": 0, "rollbacks": 0, "runs": 0}

    async def ingest() -> None:
        conn = await connect(url)
        try:
            for start in range(1000, len(values), 100):
                batch = [decode_message(Incoming("feedback", 0, start + k, b"k", v), max_event_bytes=1 << 18)
                         for k, v in enumerate(values[start:start + 100])]
                await ingest_batch(conn, batch, consumer_group="g", publish=_nothing)
                tally["batches"] += 1
                if tally["batches"] % 5 == 0:
                    await catch_up(conn, SignalConfig())
                await asyncio.sleep(0)
        finally:
            done.set()
            await conn.close()

    async def builds() -> None:
        conn = await connect(url, autocommit=True)
        try:
            while not done.is_set() or tally["builds"] < 2:
                try:
                    await round_ops(conn, tmp_path).build(BuildRound())
                    tally["builds"] += 1
                except BuilderBusy:  # a rollback holds the rounds lock: a build does not wait for it
                    await asyncio.sleep(0.01)
        finally:
            await conn.close()

    async def rollbacks() -> None:
        conn = await connect(url, autocommit=True)
        try:
            while not done.is_set():
                cur = await conn.execute("SELECT max(number) FROM rounds")
                newest = (await cur.fetchone() or (None,))[0]
                if newest is not None:
                    await round_ops(conn, tmp_path).rollback(RollBackRound(round=newest, reason="stress"))
                    await round_ops(conn, tmp_path).restore(RestoreRound(round=newest))
                    tally["rollbacks"] += 1
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def runs() -> None:
        conn = await connect(url, autocommit=True)
        try:
            while not done.is_set():
                await record(conn, [_ok_run(str(uuid.uuid4()))])
                tally["runs"] += 1
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    async def go() -> None:
        await asyncio.gather(ingest(), builds(), rollbacks(), runs())

    asyncio.run(go())

    assert tally["batches"] == 30 and tally["builds"] >= 2 and tally["rollbacks"] >= 1 and tally["runs"] >= 10
    seen = positions(url)
    assert seen == list(range(1, len(seen) + 1))
    with connect_sync(url) as conn:
        counts = dict(conn.execute("SELECT type, count(*) FROM events WHERE NOT data ? 'user' GROUP BY 1").fetchall())
        stored = conn.execute("SELECT count(*) FROM events WHERE data ? 'user'").fetchone()
    assert counts["round_published"] == tally["builds"] and counts["nightly_run"] == tally["runs"]
    assert counts["round_rolled_back"] == counts["round_restored"] == tally["rollbacks"]
    assert stored == (len(values),)

    async def drift() -> list[Any]:
        conn = await connect(url)
        try:
            await catch_up(conn, SignalConfig())
            return [d for d in await check(conn, SignalConfig()) if d.missing or d.extra]
        finally:
            await conn.close()

    assert asyncio.run(drift()) == []


def _ignore(_: dict[str, Any]) -> None:
    return None


def test_the_old_failure_is_a_unique_violation_not_a_silent_renumbering(endpoints: Endpoints) -> None:
    """What the guard prevents: the same append without it would collide on the primary key (the reported bug)."""
    url = endpoints.database_url
    _run_record(url)
    with connect_sync(url) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        (seen,) = conn.execute("SELECT max(position) FROM events").fetchone()
        _run_record(url)
        conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        (still,) = conn.execute("SELECT max(position) FROM events").fetchone()
        assert still == seen  # the snapshot does not see the newer head, even under the lock
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO events (position, event_id, type, occurred_at, data) VALUES"
                         " (%s, gen_random_uuid(), 'x', now(), '{}')", [seen + 1])
        conn.rollback()
