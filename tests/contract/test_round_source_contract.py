"""The RoundSource contract: the rounds lock a build holds, its snapshot, the quarantine list's version."""

from __future__ import annotations

import asyncio

import pytest

from flywheel.domain.events import NightlyRunFinished, QuarantineItemsAdded, RoundRolledBack
from flywheel.ports import BuilderBusy
from store.rounds import quarantine_version
from tests.contract.backends import Backend
from tests.contract.rounds_events import publish, published, restore, roll_back


def test_a_build_is_refused_while_another_builds(backend: Backend) -> None:
    async def go() -> None:
        async with backend.source() as one, backend.source() as two:
            async with one.exclusive():
                with pytest.raises(BuilderBusy):
                    async with two.exclusive():
                        pass
            async with two.exclusive():  # released by the first
                pass

    asyncio.run(go())


def test_a_change_of_the_rounds_does_not_wait_for_a_build_but_the_publication_waits_for_it(
        backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1)
        async with backend.source() as source, backend.rounds() as rounds:
            async def publication() -> list[int]:
                async with source.publication() as log:
                    return await log.rolled_back_since(1)

            async with source.exclusive():
                async with rounds.change() as change:  # on-call does not wait for the build
                    await change.record([RoundRolledBack(round=1, reason="bad", after=await change.head())])
                    waiting = asyncio.ensure_future(publication())
                    await asyncio.sleep(0.2)
                    assert not waiting.done()  # the build's publication waits for the change
                assert await asyncio.wait_for(waiting, 10) == [1]  # and sees the rollback

    asyncio.run(go())


def test_a_snapshot_sees_the_log_as_it_began_and_the_publication_sees_every_commit(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1)
        async with backend.source() as source:
            async with source.snapshot() as snapshot:
                assert await snapshot.head() == 1
                async with backend.unit() as log:  # another writer commits meanwhile
                    await log.record([published(2, parent=1)])
                assert await snapshot.head() == 1 and await snapshot.next_number() == 2
                current = await snapshot.current()
                assert current is not None and current.number == 1
            async with source.publication() as log:
                assert await log.head() == 2
            async with source.snapshot() as snapshot:
                assert await snapshot.next_number() == 3

    asyncio.run(go())


def test_rolled_back_rounds_keep_their_numbers(backend: Backend) -> None:
    async def go() -> None:
        async with backend.rounds() as rounds:
            await publish(rounds, 1, 2)
            await roll_back(rounds, 2)
        async with backend.source() as source, source.snapshot() as snapshot:
            assert await snapshot.next_number() == 3
            current = await snapshot.current()
            assert current is not None and current.number == 1

    asyncio.run(go())


def test_deriving_signals_brings_the_checkpoint_to_the_head(backend: Backend) -> None:
    async def go() -> None:
        async with backend.unit() as log:
            await log.record([NightlyRunFinished(run_id=str(i), started_at="2026-12-01T03:00:00+00:00", status="ok",
                                                 steps={}, error=None) for i in range(3)])
        async with backend.source() as source:
            await source.derive_signals()
            async with source.snapshot() as snapshot:
                assert await snapshot.signals_checkpoint() == 3 == await snapshot.head()

    asyncio.run(go())


def test_the_quarantine_version_names_the_lists_content(backend: Backend) -> None:
    added = QuarantineItemsAdded.listing("gsm8k", [("second prompt", "answer"), ("first prompt", "answer")])

    async def go() -> None:
        async with backend.source() as source, backend.rounds() as rounds:
            async def quarantine() -> tuple[str, list[tuple[str, str, str, str]], list[dict[str, str]]]:
                async with source.snapshot() as snapshot:
                    q = await snapshot.quarantine()
                assert q.items.version == q.version
                return q.version, [(i.item_id, i.list_name, i.prompt, i.answer) for i in q.items.items], q.slices

            empty = await quarantine()
            assert empty == (quarantine_version([], []), [], [])
            async with backend.unit() as log:
                await log.record([added])
            listed = await quarantine()
            assert listed[1] == sorted((i.item_id, "gsm8k", i.prompt, i.answer) for i in added.items)
            assert listed[2] == [] and listed[0] == quarantine_version([i.item_id for i in added.items], [])
            await publish(rounds, 1)
            await roll_back(rounds, 1, "leak", {"app_id": "support", "since": "2026-11-01T00:00:00+00:00"})
            sliced = await quarantine()
            assert sliced[2] == [{"round": 1, "app_id": "support", "since": "2026-11-01T00:00:00+00:00"}]
            assert sliced[0] not in (empty[0], listed[0])
            await restore(rounds, 1)
            assert await quarantine() == listed

    asyncio.run(go())
