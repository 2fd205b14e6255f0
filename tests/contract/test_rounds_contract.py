"""The Rounds contract: the read model folded from round events, read-your-writes in a change, the lock."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from flywheel.domain.events import RoundConsumed, RoundPromoted, RoundRolledBack
from flywheel.ports import RoundState
from tests.contract.backends import Backend
from tests.contract.rounds_events import publish, published, restore, roll_back


class Boom(RuntimeError):
    pass


def test_a_published_round_is_found_as_published(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            async with rounds.change() as change:
                assert await change.find(1) is None and await change.current() is None
            await publish(rounds, 1, 2)
            async with rounds.change() as change:
                found = await change.find(2)
        assert found == RoundState(number=2, position=2, path="/rounds/round-0002", content_hash="hash-2",
                                   watermark=1, parent=1, quarantine_version="q-0",
                                   summary={"rows": {"sft": 2}, "apps": ["support"]}, rolled_back=False,
                                   rollback_reason=None, consumed_by=(),
                                   history=({"what": "built (promoted)", "by": None, "position": 2},))

    asyncio.run(go())


def test_current_is_the_newest_round_not_rolled_back(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1, 2, 3)

            async def now() -> tuple[int | None, RoundState | None]:
                async with rounds.change() as change:
                    current = await change.current()
                    return (None if current is None else current.number), await change.find(3)

            assert (await now())[0] == 3
            await roll_back(rounds, 3, "toxic")
            number, three = await now()
            assert number == 2 and three is not None and three.rolled_back and three.rollback_reason == "toxic"
            await roll_back(rounds, 1)
            assert (await now())[0] == 2
            await roll_back(rounds, 2)
            assert (await now())[0] is None
            await restore(rounds, 1)
            assert (await now())[0] == 1
            await restore(rounds, 3)
            number, three = await now()
            assert number == 3 and three is not None and not three.rolled_back and three.rollback_reason is None

    asyncio.run(go())


def test_a_change_sees_its_own_records_before_others_do(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds, backend.rounds() as other:
            await publish(rounds, 1, 2)
            async with rounds.change() as change:
                await change.record([RoundRolledBack(round=2, reason="r", after=await change.head())])
                found, current = await change.find(2), await change.current()
                assert found is not None and found.rolled_back
                assert current is not None and current.number == 1
                async with other.change(lock=False) as outside:
                    seen = await outside.current()
                    assert seen is not None and seen.number == 2
            async with other.change(lock=False) as outside:
                seen = await outside.current()
                assert seen is not None and seen.number == 1

    asyncio.run(go())


def test_a_run_consumes_a_round_once(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1)
            async with rounds.change(lock=False) as change:
                assert len(await change.record([RoundConsumed(round=1, run_id="run-a")])) == 1
                assert await change.record([RoundConsumed(round=1, run_id="run-a")]) == []
                await change.record([RoundConsumed(round=1, run_id="run-b"), RoundConsumed(round=9, run_id="x")])
            async with rounds.change(lock=False) as change:
                found = await change.find(1)
                assert found is not None and found.consumed_by == ("run-a", "run-b")
                assert await change.find(9) is None

    asyncio.run(go())


def test_a_change_that_raises_leaves_the_rounds_as_they_were(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1)
            with pytest.raises(Boom):
                async with rounds.change() as change:
                    await change.record([RoundRolledBack(round=1, reason="r", after=1), published(2, parent=1)])
                    raise Boom
            async with rounds.change() as change:
                one, two, current = await change.find(1), await change.find(2), await change.current()
        assert one is not None and not one.rolled_back and two is None
        assert current is not None and current.number == 1
        assert await backend.head() == 1

    asyncio.run(go())


def test_the_lock_serialises_two_changes(backend: Backend) -> None:
    order: list[str] = []

    async def go() -> tuple[str, ...]:
        async with backend.rounds() as rounds:
            await publish(rounds, 1)
        entered = asyncio.Event()

        async def first() -> None:
            async with backend.rounds() as rounds, rounds.change() as change:
                order.append("first in")
                entered.set()
                await asyncio.sleep(0.2)
                await change.record([RoundConsumed(round=1, run_id="first")])
                order.append("first out")

        async def second() -> tuple[str, ...]:
            await entered.wait()
            async with backend.rounds() as rounds, rounds.change() as change:
                order.append("second in")
                found = await change.find(1)
                assert found is not None
                return found.consumed_by

        _, seen = await asyncio.gather(first(), second())
        return seen

    assert asyncio.run(go()) == ("first",)  # the second waited for the first to commit
    assert order == ["first in", "first out", "second in"]


def test_a_change_without_the_lock_does_not_wait_for_it(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1)
        entered, done = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with backend.rounds() as rounds, rounds.change():
                entered.set()
                await asyncio.wait_for(done.wait(), 10)

        async def reader() -> None:
            await entered.wait()
            async with backend.rounds() as rounds, rounds.change(lock=False) as change:
                assert await change.find(1) is not None
            done.set()

        await asyncio.gather(holder(), reader())

    asyncio.run(go())


def test_a_held_round_is_never_current_until_promoted(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1)
            async with rounds.change() as change:
                await change.record([replace(published(2, parent=1), state="held", by="alice",
                                             held_because=["gate min_rows:sft failed"])])
            async with rounds.change() as change:
                held = await change.find(2)
                assert held is not None and held.state == "held"
                assert [(h["what"], h["by"], h.get("reason")) for h in held.history] == [
                    ("built (held)", "alice", "gate min_rows:sft failed")]
                now = await change.current()
                assert now is not None and now.number == 1
            await roll_back(rounds, 1)
            async with rounds.change() as change:
                assert await change.current() is None  # a rollback never moves current to a held round
                await change.record([RoundPromoted(round=2, reason="looked at it", by="bob",
                                                   after=await change.head())])
            async with rounds.change() as change:
                now = await change.current()
                assert now is not None and now.number == 2 and now.state == "promoted"
                assert [h["what"] for h in now.history] == ["built (held)", "promoted"]
                assert now.history[-1]["by"] == "bob" and now.history[-1]["reason"] == "looked at it"

    asyncio.run(go())
