"""Round events for the contract suites."""

from __future__ import annotations

from flywheel.domain.events import RoundPublished, RoundRestored, RoundRolledBack
from flywheel.ports import Rounds


def published(number: int, *, parent: int | None = None, watermark: int = 1) -> RoundPublished:
    return RoundPublished(round=number, path=f"/rounds/round-{number:04d}", content_hash=f"hash-{number}",
                          watermark=watermark, parent=parent, quarantine_version="q-0", config_version="c-0",
                          summary={"rows": {"sft": number}, "apps": ["support"]})


async def publish(rounds: Rounds, *numbers: int) -> None:
    for n in numbers:
        async with rounds.change() as change:
            await change.record([published(n, parent=n - 1 or None)])


async def roll_back(rounds: Rounds, number: int, reason: str = "bad", quarantine: dict[str, str] | None = None) -> None:
    async with rounds.change() as change:
        await change.record([RoundRolledBack(round=number, reason=reason, quarantine=quarantine,
                                             after=await change.head())])


async def restore(rounds: Rounds, number: int) -> None:
    async with rounds.change() as change:
        await change.record([RoundRestored(round=number, after=await change.head())])
