"""Signals derived by the streaming path equal those of a replay of the log (real Postgres)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.domain.signals import SignalConfig
from flywheel.settings import Endpoints
from flywheel.simulator import generate
from store.db import connect, connect_sync, create_schema
from store.ingest import Incoming, decode_message, ingest_batch
from store.projections import check
from store.signals import GroupCache, catch_up, touched_groups
from store.tables import READ_MODELS
from tests.factories import event, interaction, raw
from tests.store_helpers import in_store

pytestmark = pytest.mark.integration
CLEAN = {table: (0, 0) for table in READ_MODELS}  # no drift anywhere


async def _nothing(_: Any) -> None:
    return None


def ingest_all(url: str, values: list[bytes], sizes: list[int], project_every: int | None = 1,
               first_offset: int = 0, cache: GroupCache | None = None) -> None:
    """Ingest in batches of the given sizes (cycled); the signals projector runs after every
    `project_every` batches and at the end, as a worker's timer would (None: never), with `cache` as a
    long-lived projector keeps one."""
    async def run() -> None:
        conn = await connect(url)
        try:
            start, i = 0, 0
            while start < len(values):
                size = sizes[i % len(sizes)]
                batch = [decode_message(Incoming("feedback", 0, first_offset + start + k, b"k", v),
                                        max_event_bytes=256 * 1024)
                         for k, v in enumerate(values[start:start + size])]
                await ingest_batch(conn, batch, consumer_group="g", publish=_nothing)
                start, i = start + size, i + 1
                if project_every and i % project_every == 0:
                    await catch_up(conn, SignalConfig(), cache=cache)
            if project_every:
                await catch_up(conn, SignalConfig(), cache=cache)
        finally:
            await conn.close()

    asyncio.run(run())


def drift(url: str) -> dict[str, tuple[int, int]]:
    async def run() -> dict[str, tuple[int, int]]:
        conn = await connect(url)
        try:
            return {d.table: (d.missing, d.extra) for d in await check(conn, SignalConfig())}
        finally:
            await conn.close()

    return asyncio.run(run())


def signals(url: str) -> list[tuple[Any, ...]]:
    with connect_sync(url) as conn:
        return conn.execute("SELECT kind, rule, status, data FROM signals ORDER BY signal_id").fetchall()


def test_an_edit_becomes_a_pair_and_an_sft_sample(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    edited = "Open Settings → Security → Reset password, then follow the link we email you within 10 minutes."
    ingest_all(url, [raw(interaction("i1")), raw(event("edit", "i1", {"edited_response": edited}))], [10])

    by_kind = {kind: (rule, status, data) for kind, rule, status, data in signals(url)}
    assert set(by_kind) >= {"pair", "sft"}
    rule, status, pair = by_kind["pair"]
    assert (rule, status) == ("edit_pair", "accepted")
    assert pair["chosen"] == edited and pair["rejected"] == "Open settings, then security."
    assert pair["prompt"] == [{"role": "user", "content": "How do I reset my password?"}]
    assert len(pair["source_event_ids"]) == 2 and pair["model_version"] == "m-1"
    assert by_kind["sft"][2]["messages"][-1] == {"role": "assistant", "content": edited}


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5),
       project_every=st.integers(1, 4), cache_records=st.sampled_from([None, 0, 60, 100_000]))
def test_streaming_signals_equal_a_replay_of_the_log(
    endpoints: Endpoints, seed: int, sizes: list[int], project_every: int, cache_records: int | None
) -> None:
    url = endpoints.database_url
    with connect_sync(url) as conn:
        conn.execute("TRUNCATE events, interactions, feedback, signals, tracking, parked, dead_letters, checkpoints")
    values = [m.value for m in generate(1200, seed=seed) if m.expected_reason is None]
    # a projector without a cache, one that keeps every group, and ones that must evict (0, 60 records)
    ingest_all(url, values, sizes, project_every,
               cache=None if cache_records is None else GroupCache(cache_records))

    assert drift(url) == CLEAN
    kinds = {row[0] for row in signals(url)}
    assert {"pair", "kto", "sft", "hard_case"} <= kinds
    # and the rows are a pure function of the log: a different batching gives byte-identical signals
    first = signals(url)
    with connect_sync(url) as conn:
        conn.execute("TRUNCATE events, interactions, feedback, signals, tracking, parked, dead_letters, checkpoints")
    ingest_all(url, values, [len(values)])
    assert signals(url) == first
    # every signal's lineage points at events in the log
    sources = sorted({e for *_, data in first for e in data["source_event_ids"]})
    with connect_sync(url) as conn:
        found = conn.execute("SELECT count(*) FROM events WHERE event_id = ANY(%s::uuid[])", [sources]).fetchone()
    assert sources and found == (len(sources),)


def test_a_cached_projector_rewrites_only_what_changed_and_starts_over_when_the_checkpoint_moved(
        endpoints: Endpoints) -> None:
    url = endpoints.database_url
    values = [m.value for m in generate(900, seed=11) if m.expected_reason is None]
    third = len(values) // 3
    cache = GroupCache(100_000)
    ingest_all(url, values[:third], [100], cache=cache)
    assert len(cache) > 0 and cache.position is not None
    checkpoint = cache.position
    with connect_sync(url) as conn:
        before = conn.execute("SELECT prompt_key, signal_id, xmin::text FROM signals").fetchall()
    ingest_all(url, values[third:2 * third], [third], first_offset=third, cache=cache)
    assert drift(url) == CLEAN

    async def touched(conn: Any) -> list[str]:
        async with conn.cursor() as cur:
            return await touched_groups(cur, checkpoint, cache.position)

    rederived = set(in_store(url, touched))
    with connect_sync(url) as conn:
        after = {(k, sid): x for k, sid, x in conn.execute("SELECT prompt_key, signal_id, xmin::text FROM signals")}
    kept = [(k, sid) for k, sid, x in before if k in rederived and after.get((k, sid)) == x]
    rewritten = [(k, sid) for k, sid, x in before if k in rederived and after.get((k, sid)) != x]
    # groups derived again kept the rows whose record did not change, and rewrote the others
    assert kept and rewritten
    # The read model is thrown away behind the cache's back (as a schema renewal does): it must start over.
    with connect_sync(url) as conn:
        conn.execute("TRUNCATE signals")
        conn.execute("UPDATE checkpoints SET position = 0 WHERE name = 'signals'")
    ingest_all(url, values[2 * third:], [third], first_offset=2 * third, cache=cache)
    assert drift(url) == CLEAN
    streamed = signals(url)
    with connect_sync(url) as conn:
        conn.execute("TRUNCATE events, interactions, feedback, signals, tracking, parked, dead_letters, checkpoints")
    ingest_all(url, values, [len(values)])
    assert signals(url) == streamed


def test_signals_follow_the_log_from_a_checkpoint(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    edited = "Open Settings → Security → Reset password, then follow the link we email you within 10 minutes."
    ingest_all(url, [raw(interaction("i1")), raw(event("edit", "i1", {"edited_response": edited}))], [1],
               project_every=None)

    async def project() -> Any:
        conn = await connect(url)
        try:
            return await catch_up(conn, SignalConfig())
        finally:
            await conn.close()

    assert signals(url) == []
    # check() leaves out the groups the projector has still to derive
    assert drift(url) == CLEAN
    with connect_sync(url) as holder:  # another worker's projector holds the checkpoint ...
        holder.execute("INSERT INTO checkpoints VALUES ('signals', 0)")
        holder.commit()
        holder.execute("SELECT 1 FROM checkpoints WHERE name = 'signals' FOR UPDATE")
        assert asyncio.run(project()) is None  # ... so this one skips its turn instead of waiting
    run = asyncio.run(project())
    assert (run.after, run.upto, run.groups) == (0, 2, 1)
    assert {row[0] for row in signals(url)} >= {"pair", "sft"}
    assert drift(url) == CLEAN
    assert asyncio.run(project()).upto == 2  # nothing new: the checkpoint stays
    with connect_sync(url) as conn:
        conn.execute("DELETE FROM signals WHERE kind = 'sft'")  # and a caught-up projector is checked in full
    assert drift(url)["signals"] == (1, 0)


@pytest.mark.parametrize("older", ["DROP COLUMN sort_key", "ALTER COLUMN data TYPE jsonb USING data::jsonb"])
def test_a_signals_table_from_an_older_version_is_dropped_and_derived_again(endpoints: Endpoints, older: str
                                                                             ) -> None:
    url = endpoints.database_url
    values = [m.value for m in generate(300, seed=5) if m.expected_reason is None]
    ingest_all(url, values, [100])
    create_schema(url)  # a table of this version's shape stays as it is
    with connect_sync(url) as conn:
        want = conn.execute("SELECT kind, count(*) FROM signals GROUP BY 1 ORDER BY 1").fetchall()
        assert want
        conn.execute(f"ALTER TABLE signals {older}")  # the shape an older version made
        conn.commit()
    create_schema(url)
    with connect_sync(url) as conn:
        assert conn.execute("SELECT count(*) FROM signals").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM checkpoints WHERE name = 'signals'").fetchone() == (0,)
    ingest_all(url, [], [100])  # the projector's next run starts from the beginning of the log
    with connect_sync(url) as conn:
        assert conn.execute("SELECT kind, count(*) FROM signals GROUP BY 1 ORDER BY 1").fetchall() == want
    assert drift(url) == CLEAN


def test_another_table_from_an_older_version_is_an_error_that_says_what_to_do(endpoints: Endpoints) -> None:
    with connect_sync(endpoints.database_url) as conn:
        conn.execute("ALTER TABLE interactions ADD COLUMN legacy text")
        conn.commit()
    with pytest.raises(RuntimeError, match=r"'interactions'.*legacy.*flywheel replay"):
        create_schema(endpoints.database_url)
