"""Rolling a round back, restoring it and registering its consumption (flywheel.services.rollback), in memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest

from flywheel.domain.commands import RegisterConsumption, RestoreRound, RollBackRound
from flywheel.domain.events import RoundPublished, RoundRestored, RoundRolledBack
from flywheel.domain.rounds.rollback import MARKER
from flywheel.services.rollback import Change, register_consumption, restore, rollback
from store.memory import MemoryEventStore, MemoryRounds, MemoryRoundSource
from store.roundfiles import RoundDirectories


class OnCall:
    """The rounds of a store in memory, their directories under a temporary root and what was announced."""

    def __init__(self, root: Path) -> None:
        self.store = MemoryEventStore()
        self.rounds = MemoryRounds(self.store)
        self.files = RoundDirectories(root)
        self.root = root
        self.said: list[dict[str, Any]] = []

    def announce(self, message: dict[str, Any]) -> None:
        self.said.append(message)

    async def publish(self, *numbers: int) -> None:
        for n in numbers:
            self.files.location(n).mkdir(parents=True)
            async with self.rounds.change() as change:
                await change.record([RoundPublished(
                    round=n, path=str(self.files.location(n)), content_hash=f"hash-{n}", watermark=n,
                    parent=n - 1 or None, quarantine_version="q", config_version="c", summary={})])
            self.files.point_current(n)

    async def rollback(self, number: int, reason: str = "toxic", quarantine: dict[str, str] | None = None) -> Change:
        return await rollback(RollBackRound(round=number, reason=reason, quarantine=quarantine), rounds=self.rounds,
                              files=self.files, announce=self.announce)

    async def restore(self, number: int) -> Change:
        return await restore(RestoreRound(round=number), rounds=self.rounds, files=self.files,
                             announce=self.announce)

    async def consume(self, number: int, run_id: str) -> bool:
        return await register_consumption(RegisterConsumption(round=number, run_id=run_id), rounds=self.rounds,
                                          files=self.files)

    def current(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def marker(self, number: int) -> dict[str, Any] | None:
        path = self.files.location(number) / MARKER
        return orjson.loads(path.read_bytes()) if path.exists() else None

    async def events(self, after: int = 0) -> list[tuple[str, dict[str, Any]]]:
        return [(e.type, e.data["payload"]) async for chunk in self.store.read(after=after) for e in chunk]


def run(tmp_path: Path, scenario: Callable[[OnCall], Coroutine[Any, Any, None]]) -> OnCall:
    on_call = OnCall(tmp_path / "rounds")
    asyncio.run(scenario(on_call))
    return on_call


def test_a_rollback_records_the_decision_then_moves_current_and_marks_the_round(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1, 2)
        change = await on.rollback(2, "toxic answers", {"app_id": "support"})
        assert change == Change(round=2, changed=True, current=1)
        assert await on.events(after=2) == [(RoundRolledBack.TYPE, {"round": 2, "reason": "toxic answers",
                                                                    "quarantine": {"app_id": "support"}})]
        assert on.store.events[-1].event_id == RoundRolledBack(round=2, reason="toxic answers", after=2).event_id
        assert on.store.model.quarantine().slices == [{"round": 2, "app_id": "support"}]

    on = run(tmp_path, scenario)
    assert on.current() == "round-0001"
    assert on.marker(2) == {"round": 2, "reason": "toxic answers", "quarantine": {"app_id": "support"}}
    assert on.marker(1) is None
    assert on.said == [{"type": "round_rolled_back", "round": 2, "reason": "toxic answers", "current": 1, "by": ""}]


def test_rolling_back_again_changes_nothing_and_keeps_the_first_reason(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1, 2)
        await on.rollback(2, "first reason")
        assert await on.rollback(2, "second reason") == Change(round=2, changed=False, current=1)
        assert await on.store.head() == 3

    on = run(tmp_path, scenario)
    assert on.marker(2) == {"round": 2, "reason": "first reason", "quarantine": None}
    assert [m["reason"] for m in on.said] == ["first reason"]
    assert on.current() == "round-0001"


def test_a_restore_undoes_the_rollback_once(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1, 2)
        await on.rollback(2, "leak", {"model_version": "m-2"})
        assert await on.restore(2) == Change(round=2, changed=True, current=2)
        assert (await on.events(after=3))[0] == (RoundRestored.TYPE, {"round": 2})
        assert on.store.model.quarantine().slices == []
        assert await on.restore(2) == Change(round=2, changed=False, current=2)
        assert await on.store.head() == 4

    on = run(tmp_path, scenario)
    assert on.current() == "round-0002" and on.marker(2) is None
    assert [m["type"] for m in on.said] == ["round_rolled_back", "round_restored"]
    assert on.said[-1] == {"type": "round_restored", "round": 2, "current": 2, "by": ""}


def test_a_rollback_after_a_restore_is_a_new_fact(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1)
        await on.rollback(1, "once")
        await on.restore(1)
        assert (await on.rollback(1, "twice")).changed
        rolled = [e for e in on.store.events if e.type == RoundRolledBack.TYPE]
        assert [e.data["payload"]["reason"] for e in rolled] == ["once", "twice"]
        assert len({e.event_id for e in rolled}) == 2

    on = run(tmp_path, scenario)
    assert on.marker(1) == {"round": 1, "reason": "twice", "quarantine": None}


def test_rolling_back_the_only_round_leaves_no_current(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1)
        assert await on.rollback(1) == Change(round=1, changed=True, current=None)

    on = run(tmp_path, scenario)
    assert on.current() is None and not (on.root / "current").exists()
    assert on.said[0]["current"] is None


def test_an_unknown_round_is_a_lookup_error_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1)
        for attempt in (on.rollback(7), on.restore(7), on.consume(7, "run")):
            with pytest.raises(LookupError, match="no round 7"):
                await attempt
        assert await on.store.head() == 1 and not on.store.rounds_lock.locked()

    on = run(tmp_path, scenario)
    assert on.said == [] and on.current() == "round-0001"


def test_a_rollback_needs_a_reason(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1)
        for number in (1, 7):  # checked before the round is looked up
            with pytest.raises(ValueError, match="reason"):
                await on.rollback(number, " \n")
        assert await on.store.head() == 1

    on = run(tmp_path, scenario)
    assert on.said == [] and on.marker(1) is None


def test_a_run_registers_its_consumption_once(tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1)
        assert await on.consume(1, "run-b")
        assert not await on.consume(1, "run-b")
        assert await on.consume(1, "run-a")
        assert on.store.model.rounds[1].consumed_by == ("run-b", "run-a")

    on = run(tmp_path, scenario)
    written = orjson.loads((on.files.location(1) / "consumption.json").read_bytes())
    assert written["round"] == 1 and written["runs"] == ["run-a", "run-b"]
    assert [(c["run_id"], c["by"]) for c in written["consumptions"]] == [("run-b", None), ("run-a", None)]


def test_neither_a_rollback_nor_a_consumption_waits_for_a_build_but_a_publication_waits_for_them(
        tmp_path: Path) -> None:
    async def scenario(on: OnCall) -> None:
        await on.publish(1)
        source = MemoryRoundSource(on.store)
        async with source.exclusive():  # a build is running: on-call acts at once
            assert (await asyncio.wait_for(on.rollback(1), 5)).changed
            assert await asyncio.wait_for(on.consume(1, "run"), 5)

        async def publish() -> list[int]:
            async with source.publication() as log:
                return await log.rolled_back_since(0)

        async with MemoryRounds(on.store).change():  # an on-call change holds the publication back
            waiting = asyncio.ensure_future(publish())
            await asyncio.sleep(0.05)
            assert not waiting.done()
        assert await asyncio.wait_for(waiting, 5) == [1]  # and the publication sees what it did

    run(tmp_path, scenario)


def test_current_is_swapped_under_the_rounds_lock_from_what_is_committed(tmp_path: Path) -> None:
    """Each change points `current` after its commit, holding the rounds lock and reading the committed state, so
    two changes whose commits and swaps interleave still leave the latest state."""
    class Watched(RoundDirectories):
        def __init__(self, root: Path, store: MemoryEventStore) -> None:
            super().__init__(root)
            self.store = store
            self.swaps: list[tuple[int | None, bool]] = []  # (where current went, whether the lock was held)

        def point_current(self, number: int | None) -> None:
            self.swaps.append((number, self.store.rounds_lock.locked()))
            super().point_current(number)

    async def scenario(on: OnCall) -> None:
        await on.publish(1, 2)
        on.files = watched = Watched(on.root, on.store)
        # a swap of another change that ran late (after this rollback's) would have left round 2 current: the
        # next change's swap reads what is committed
        await on.rollback(2)
        watched.point_current(2)
        assert (await on.rollback(2)).current == 1 and on.current() == "round-0001"
        await on.restore(2)
        assert watched.swaps == [(1, True), (2, False), (1, True), (2, True)]

    run(tmp_path, scenario)
