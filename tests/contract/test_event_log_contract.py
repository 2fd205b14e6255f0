"""The EventLog contract: gap-free positions from 1, idempotent on event_id, ordered reads, all-or-nothing units."""

from __future__ import annotations

import asyncio

import pytest

from flywheel.domain.events import NightlyRunFinished
from tests.contract.backends import Backend


def runs(*names: str) -> list[NightlyRunFinished]:
    return [NightlyRunFinished(run_id=n, started_at="2026-12-01T03:00:00+00:00", status="ok", steps={"n": [n]},
                               error=None) for n in names]


class Boom(RuntimeError):
    pass


def test_positions_start_at_one_and_are_gap_free(backend: Backend) -> None:
    async def go() -> None:
        assert await backend.head() == 0
        async with backend.unit() as log:
            first = await log.record(runs("a", "b"))
        async with backend.unit() as log:
            second = await log.record(runs("c"))
        assert [e.position for e in first] == [1, 2] and [e.position for e in second] == [3]
        stored = await backend.read()
        assert stored == [*first, *second]
        assert [e.event_id for e in stored] == [r.event_id for r in runs("a", "b", "c")]
        assert {e.type for e in stored} == {NightlyRunFinished.TYPE}
        assert stored[2].data["payload"] == runs("c")[0].payload()

    asyncio.run(go())


def test_a_repeated_event_id_is_a_no_op_and_not_returned_as_new(backend: Backend) -> None:
    async def go() -> None:
        async with backend.unit() as log:
            await log.record(runs("a"))
        async with backend.unit() as log:
            again = await log.record(runs("a", "b"))
            twice = await log.record(runs("c", "c"))
            old = await log.record(runs("a"))
        assert [(e.position, e.event_id) for e in again] == [(2, runs("b")[0].event_id)]
        assert [(e.position, e.event_id) for e in twice] == [(3, runs("c")[0].event_id)]
        assert old == []
        assert await backend.head() == 3
        assert [e.data["payload"]["run_id"] for e in await backend.read()] == ["a", "b", "c"]

    asyncio.run(go())


def test_reads_are_in_position_order_after_and_up_to(backend: Backend) -> None:
    async def go() -> None:
        async with backend.unit() as log:
            await log.record(runs(*"abcde"))
        assert [e.position for e in await backend.read()] == [1, 2, 3, 4, 5]
        assert [e.position for e in await backend.read(after=2, upto=4)] == [3, 4]
        assert [e.data["payload"]["run_id"] for e in await backend.read(after=3)] == ["d", "e"]
        assert [e.position for e in await backend.read(upto=2)] == [1, 2]
        assert await backend.read(after=5) == [] and await backend.read(upto=0) == []
        assert [e.position for e in await backend.read(after=1, upto=99)] == [2, 3, 4, 5]

    asyncio.run(go())


def test_the_head_counts_a_units_own_records_and_others_see_them_once_committed(backend: Backend) -> None:
    async def go() -> None:
        async with backend.unit() as log:
            assert await log.head() == 0
            await log.record(runs("a", "b"))
            assert await log.head() == 2
            assert await backend.head() == 0 and await backend.read() == []
        assert await backend.head() == 2

    asyncio.run(go())


def test_a_unit_of_work_that_raises_leaves_nothing(backend: Backend) -> None:
    async def go() -> None:
        async with backend.unit() as log:
            await log.record(runs("kept"))
        with pytest.raises(Boom):
            async with backend.unit() as log:
                await log.record(runs("lost-1", "lost-2"))
                raise Boom
        assert await backend.head() == 1
        assert [e.data["payload"]["run_id"] for e in await backend.read()] == ["kept"]
        async with backend.unit() as log:  # no gap where the failed unit was, and its ids are new again
            after = await log.record(runs("lost-1", "next"))
        assert [e.position for e in after] == [2, 3]

    asyncio.run(go())


def test_concurrent_units_get_distinct_gap_free_positions_each_unit_in_one_run(backend: Backend) -> None:
    async def writer(name: str) -> list[int]:
        async with backend.unit() as log:
            first = await log.record(runs(f"{name}-1"))
            await asyncio.sleep(0.05)  # another unit tries to append meanwhile
            second = await log.record(runs(f"{name}-2", f"{name}-3"))
        return [e.position for e in [*first, *second]]

    async def go() -> list[list[int]]:
        return list(await asyncio.gather(*(writer(n) for n in "xyz")))

    written = asyncio.run(go())
    assert sorted(p for positions in written for p in positions) == list(range(1, 10))
    for positions in written:  # a unit's appends are not interleaved with another's
        assert positions == list(range(positions[0], positions[0] + 3))
