"""store.ingest against the real Postgres: exactly-once, parking, dead letters, rewind, replay."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

import store.ingest
from flywheel.domain.signals import SignalConfig
from flywheel.settings import Endpoints
from store.db import connect, connect_sync
from store.ingest import BrokerView, DeadLetter, Incoming, decode_message, expire_parked, ingest_batch
from store.keys import decrypt
from store.projections import check, rebuild
from store.tables import READ_MODELS
from tests.factories import comparison, interaction, raw, thumbs

pytestmark = pytest.mark.integration
CLEAN = {table: (0, 0) for table in READ_MODELS}  # no drift anywhere


class Recorder:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def __call__(self, dead: Sequence[DeadLetter]) -> None:
        self.sent.extend(dead)


def messages(values: list[bytes], partition: int = 0, first_offset: int = 0) -> list[Incoming]:
    return [Incoming("feedback", partition, first_offset + i, b"k", v) for i, v in enumerate(values)]


def ingest(url: str, msgs: list[Incoming], publish: Recorder | None = None, broker: BrokerView | None = None) -> Any:
    async def run() -> Any:
        conn = await connect(url)
        try:
            batch = [decode_message(m, max_event_bytes=10_000) for m in msgs]
            return await ingest_batch(conn, batch, consumer_group="g", publish=publish or Recorder(), broker=broker)
        finally:
            await conn.close()

    return asyncio.run(run())


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with connect_sync(url) as conn:
        return conn.execute(sql).fetchall()


def test_batch_is_stored_once_and_redelivery_is_a_no_op(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    batch = messages([raw(interaction("i1", prompt="mail me at ann@example.com")), raw(thumbs("i1", "down"))])
    first = ingest(url, batch)
    again = ingest(url, batch)

    assert dict(first.stored) == {"interaction": 1, "thumbs": 1}
    assert again.stored == {} and again.redelivered == 2
    assert query(url, "SELECT position, type FROM events ORDER BY position") == [(1, "interaction"), (2, "thumbs")]
    assert query(url, "SELECT thumbs_down, messages->0->>'content' FROM interactions") == [(1, "mail me at [EMAIL]")]
    assert query(url, 'SELECT partition, "offset", event_time::text FROM tracking') == [
        (0, 1, "2026-11-23 10:00:00+00")]


def test_same_event_under_a_new_offset_is_a_duplicate_not_a_second_row(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    e = raw(interaction("i1"))
    ingest(url, messages([e]))
    out = ingest(url, messages([e], first_offset=1))
    assert out.duplicates == 1
    assert query(url, "SELECT count(*) FROM events") == [(1,)]


def test_bad_input_is_dead_lettered_with_reason_and_original_bytes(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    sent = Recorder()
    bad = [b"\xff\xfe", b"{nope", raw({**interaction("i9"), "schema_version": 7})]
    out = ingest(url, messages([raw(interaction("i1")), *bad]), sent)

    assert dict(out.dead) == {"bad_encoding": 1, "bad_json": 1, "unknown_schema_version": 1}
    assert [d.source.value for d in sent.sent] == bad
    rows = query(url, "SELECT reason, original, sealed_for, \"offset\" FROM dead_letters ORDER BY \"offset\"")
    # Bytes naming no readable user stay as they came; those of a user are stored under the user's key.
    assert [r[:3] for r in rows[:2]] == [("bad_encoding", bad[0], None), ("bad_json", bad[1], None)]
    reason, sealed, user, offset = rows[2]
    assert (reason, user) == ("unknown_schema_version", "u1") and sealed != bad[2]
    [(key,)] = query(url, "SELECT key FROM user_keys WHERE user_id_hash = 'u1'")
    assert decrypt(key, sealed, f"feedback/0/{offset}".encode()) == bad[2]


def test_a_second_interaction_with_the_same_id_is_refused(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    out = ingest(url, messages([raw(interaction("i1")), raw(interaction("i1", response="other"))]))
    assert dict(out.dead) == {"duplicate_interaction": 1}
    assert query(url, "SELECT response FROM interactions") == [("Open settings, then security.",)]


def test_feedback_before_its_interaction_waits_then_is_released(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    early = ingest(url, messages([raw(thumbs("i1")), raw(comparison("i1", "i2"))], partition=1))
    assert early.parked == 2 and early.stored == {}
    late = ingest(url, messages([raw(interaction("i1")), raw(interaction("i2"))], partition=2))

    assert late.released == 2
    assert query(url, "SELECT type FROM events ORDER BY position") == [
        ("interaction",), ("interaction",), ("thumbs",), ("comparison",)]
    assert query(url, "SELECT interaction_id, thumbs_up, comparisons FROM interactions ORDER BY 1") == [
        ("i1", 1, 1), ("i2", 0, 1)]
    assert query(url, "SELECT count(*) FROM parked") == [(0,)]


def test_feedback_ahead_of_its_interaction_in_one_batch_is_released_by_it(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    out = ingest(url, messages([raw(thumbs("i1")), raw(comparison("i1", "i2")), raw(interaction("i1")),
                                raw(interaction("i2"))]))
    assert (out.parked, out.released, dict(out.stored)) == (2, 2, {"interaction": 2, "thumbs": 1, "comparison": 1})
    assert query(url, "SELECT type FROM events ORDER BY position") == [
        ("interaction",), ("interaction",), ("thumbs",), ("comparison",)]
    assert query(url, "SELECT interaction_id, thumbs_up, comparisons FROM interactions ORDER BY 1") == [
        ("i1", 1, 1), ("i2", 0, 1)]
    assert query(url, "SELECT count(*) FROM parked") == [(0,)]


def test_feedback_whose_interaction_never_comes_is_dead_lettered_after_the_grace_period(
    endpoints: Endpoints,
) -> None:
    url = endpoints.database_url
    orphan = raw(thumbs("ghost"))  # occurred 10:00
    ingest(url, messages([orphan]))
    sent = Recorder()

    async def sweep(grace: float) -> Any:
        conn = await connect(url)
        try:
            return await expire_parked(conn, consumer_group="g", grace_seconds=grace, partitions={"feedback": 1},
                                       caught_up=False, publish=sent)
        finally:
            await conn.close()

    assert asyncio.run(sweep(0)) == ([], [])  # the partition has not read past 10:00 yet
    ingest(url, messages([raw(interaction("i1", occurred_at="2026-11-23T10:30:00+00:00"))], first_offset=1))
    assert asyncio.run(sweep(3600)) == ([], [])  # 10:30 is still within an hour's grace
    _, dead = asyncio.run(sweep(600))
    assert [(d.reason, d.source.value) for d in dead] == [("unknown_interaction", orphan)]
    assert sent.sent == dead
    assert query(url, "SELECT reason FROM dead_letters") == [("unknown_interaction",)]
    assert query(url, "SELECT count(*) FROM parked") == [(0,)]


def test_a_broker_ahead_of_the_store_is_rewound_not_skipped(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([raw(interaction("i1"))]))
    out = ingest(url, messages([raw(interaction("i3"))], first_offset=5))
    assert out.rewind == {("feedback", 0): 1}
    assert query(url, "SELECT count(*) FROM events") == [(1,)]


def test_replay_rebuilds_the_same_read_models(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([raw(interaction(f"i{i}")) for i in range(30)]))
    ingest(url, messages([raw(thumbs(f"i{i % 7}", "up" if i % 3 else "down")) for i in range(50)], partition=1))
    ingest(url, messages([raw(comparison("i1", "i2", "tie"))], partition=2))
    before = query(url, "SELECT * FROM interactions ORDER BY interaction_id")

    async def run() -> Any:
        conn = await connect(url)
        try:
            drifts = await check(conn, SignalConfig())
            rebuilt = await rebuild(conn, SignalConfig())
            return drifts, rebuilt
        finally:
            await conn.close()

    drifts, rebuilt = asyncio.run(run())
    assert rebuilt == 81
    assert all(d.missing == 0 and d.extra == 0 for d in drifts)
    assert query(url, "SELECT * FROM interactions ORDER BY interaction_id") == before


def test_check_notices_a_tampered_read_model(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([raw(interaction("i1")), raw(thumbs("i1"))]))
    with connect_sync(url) as conn:
        conn.execute("UPDATE interactions SET thumbs_up = 5")

    async def run() -> Any:
        conn = await connect(url)
        try:
            return await check(conn, SignalConfig())
        finally:
            await conn.close()

    drifts = {d.table: (d.missing, d.extra) for d in asyncio.run(run())}
    assert drifts == {**CLEAN, "interactions": (1, 1)}


def test_a_stalled_partition_holds_the_grace_period_back(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([raw(interaction("i1", occurred_at="2026-11-23T09:00:00+00:00"))], partition=1))
    ingest(url, messages([raw(thumbs("i-on-partition-1")),
                          raw(interaction("i2", occurred_at="2026-11-23T12:00:00+00:00"))], partition=0))

    async def sweep(caught_up: bool) -> Any:
        conn = await connect(url)
        try:
            return await expire_parked(conn, consumer_group="g", grace_seconds=0, partitions={"feedback": 2},
                                       caught_up=caught_up, publish=Recorder())
        finally:
            await conn.close()

    # Partition 0 read up to 12:00, but partition 1 (where the interaction may still be) only to 09:00.
    assert asyncio.run(sweep(caught_up=False))[1] == []
    # Nothing left to read anywhere: the grace period then runs on the wall clock.
    assert [d.reason for d in asyncio.run(sweep(caught_up=True))[1]] == ["unknown_interaction"]


def test_a_partition_not_read_yet_holds_the_grace_period_back(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([raw(thumbs("i-elsewhere")),
                          raw(interaction("i2", occurred_at="2026-11-23T12:00:00+00:00"))], partition=0))

    async def sweep(partitions: dict[str, int] | None = None) -> Any:
        conn = await connect(url)
        try:
            return await expire_parked(conn, consumer_group="g", grace_seconds=0,
                                       partitions={"feedback": 2} if partitions is None else partitions,
                                       caught_up=False, publish=Recorder())
        finally:
            await conn.close()

    # Partition 0 read up to 12:00; partition 1 (where the interaction may be) has no progress at all.
    assert asyncio.run(sweep())[1] == []
    ingest(url, messages([raw(interaction("i3", occurred_at="2026-11-23T12:00:00+00:00"))], partition=1))
    assert asyncio.run(sweep(partitions={}))[1] == []  # the partition count is not known yet: no watermark
    assert [d.reason for d in asyncio.run(sweep())[1]] == ["unknown_interaction"]


def test_feedback_whose_interaction_is_stored_by_then_is_never_dead_lettered(
        endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two races, each a transaction that cannot see another's uncommitted rows: a worker parks feedback while
    another stores its interaction (neither releases it), and a worker's commit lands between the sweep's release
    and its expiry, moving the watermark past the feedback. Both are played here by leaving the release out."""
    url = endpoints.database_url
    ingest(url, messages([raw(thumbs("i1", occurred_at="2026-11-23T09:00:00+00:00"))], partition=1))

    async def unseen(conn: Any, arriving: list[str] | None) -> list[Any]:
        return []

    async def sweep() -> Any:
        conn = await connect(url)
        try:
            return await expire_parked(conn, consumer_group="g", grace_seconds=0, partitions={"feedback": 2},
                                       caught_up=False, publish=Recorder())
        finally:
            await conn.close()

    with monkeypatch.context() as m:
        m.setattr(store.ingest, "take_released", unseen)
        ingest(url, messages([raw(interaction("i1", occurred_at="2026-11-23T12:00:00+00:00"))], partition=0))
        ingest(url, messages([raw(interaction("i2", occurred_at="2026-11-23T12:00:00+00:00"))], partition=1,
                             first_offset=1))
        assert asyncio.run(sweep()) == ([], [])  # past the grace period, but its interaction is there
    released, dead = asyncio.run(sweep())
    assert [e.type for e in released] == ["thumbs"] and dead == []
    assert query(url, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert query(url, "SELECT thumbs_up FROM interactions WHERE interaction_id = 'i1'") == [(1,)]


def test_raw_bytes_are_nulled_after_their_retention_and_the_rows_stay(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([b"{nope", raw(thumbs("never-stored", "down"))]))
    assert query(url, "SELECT count(*) FROM dead_letters WHERE original IS NOT NULL") == [(1,)]
    assert query(url, "SELECT count(*) FROM parked WHERE original IS NOT NULL") == [(1,)]

    async def expire(days: float) -> int:
        conn = await connect(url, autocommit=True)
        try:
            return await store.ingest.expire_raw_bytes(conn, days)
        finally:
            await conn.close()

    assert asyncio.run(expire(14)) == 0  # younger than the retention
    assert asyncio.run(expire(0)) == 2
    assert query(url, "SELECT count(*), count(original), count(key) FROM dead_letters") == [(1, 0, 0)]
    assert query(url, "SELECT count(*), count(original) FROM parked") == [(1, 0)]
