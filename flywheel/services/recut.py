"""RecutRound and PurgeRound: a round cut again under the erasure list as it stands, and the old one's files deleted.

A round cut before an erasure or a consent withdrawal may hold the user's rows (`rounds list` flags it). Re-cutting
builds a new round at its watermark (every build applies the whole erasure list), marks the old one superseded so
it is never current again, and announces both; purging then deletes the superseded round's data files and keeps its
manifest and report, so what it was stays on record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flywheel.domain.commands import BuildRound, PurgeRound, RecutRound
from flywheel.domain.events import RoundPurged, RoundSuperseded
from flywheel.ports import Announcer, RoundFiles, Rounds
from flywheel.services.build_round import Published
from flywheel.services.rollback import _existing, _point_current

SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True, kw_only=True)
class Recut:
    round: int  # the superseded round
    by_round: int  # the new one
    current: int | None


async def recut(command: RecutRound, *, build: Callable[[BuildRound], Awaitable[Published]], rounds: Rounds,
                files: RoundFiles, announce: Announcer) -> Recut:
    """Build a new round at round N's watermark under the current erasure list; N is superseded and `current`
    moves off it (to the new round when that one is promoted)."""
    number = command.round
    async with rounds.change(lock=False) as change:
        found = await _existing(change, number)
    if found.state == SUPERSEDED:
        raise ValueError(f"round {number} is already superseded")
    new = await build(BuildRound(watermark=found.watermark, config=command.config, by=command.by))
    async with rounds.change() as change:
        await change.record([RoundSuperseded(round=number, by_round=new.round, erasure_version=new.erasure_version,
                                             by=command.by)])
    current = await _point_current(rounds, files)
    announce({"type": "round_superseded", "round": number, "by_round": new.round, "current": current,
              "erasure_version": new.erasure_version, "by": command.by})
    return Recut(round=number, by_round=new.round, current=current)


async def purge(command: PurgeRound, *, rounds: Rounds, files: RoundFiles, announce: Announcer) -> int:
    """Delete a superseded or rolled-back round's data files (its manifest and report stay); returns how many."""
    number = command.round
    async with rounds.change() as change:
        found = await _existing(change, number)
        if found.state != SUPERSEDED and not found.rolled_back:
            raise ValueError(f"round {number} is {found.state}: re-cut or roll it back before purging its files")
        deleted = files.purge(number)
        await change.record([RoundPurged(round=number, files=deleted, by=command.by)])
    announce({"type": "round_purged", "round": number, "files": deleted, "by": command.by})
    return deleted
