"""RollBackRound, RestoreRound, PromoteRound, RegisterConsumption: on-call's changes of a published round.

Every decision is an event first (RoundRolledBack, RoundRestored, RoundConsumed), recorded under the rounds
lock; the files follow: a marker in a rolled-back round's directory and the `current` pointer, swapped
atomically. Nothing here reads or rewrites a round's data files, so a rollback takes the same time whatever the
round's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.domain.commands import PromoteRound, RegisterConsumption, RestoreRound, RollBackRound
from flywheel.domain.events import RoundConsumed, RoundPromoted, RoundRestored, RoundRolledBack
from flywheel.ports import Announcer, RoundFiles, Rounds, RoundsChange, RoundState


async def _point_current(rounds: Rounds, files: RoundFiles) -> int | None:
    """Point `current` at the current round as committed, under the rounds lock. Every change of the rounds (and
    every build's publication) does this after its commit, so whichever does it last leaves the latest state,
    whatever order their commits and swaps would otherwise run in."""
    async with rounds.change() as change:
        now = await change.current()
        number = None if now is None else now.number
        files.point_current(number)
    return number


async def _existing(change: RoundsChange, number: int) -> RoundState:
    """The round, or LookupError naming it."""
    found = await change.find(number)
    if found is None:
        raise LookupError(f"no round {number}")
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    round: int
    changed: bool  # False: it already was so (idempotent)
    current: int | None  # the current round afterwards


async def rollback(command: RollBackRound, *, rounds: Rounds, files: RoundFiles, announce: Announcer) -> Change:
    """Roll the round back; with a quarantine slice, those events are left out of every later build."""
    if not command.reason.strip():
        raise ValueError("a rollback needs a reason")
    number = command.round
    async with rounds.change() as change:
        found = await _existing(change, number)
        changed = not found.rolled_back
        if changed:
            await change.record([RoundRolledBack(round=number, reason=command.reason,
                                                 quarantine=command.quarantine, after=await change.head(),
                                                 by=command.by)])
    files.mark_rolled_back(number, {"round": number, "reason": command.reason if changed else found.rollback_reason,
                                    "quarantine": command.quarantine})
    current = await _point_current(rounds, files)
    if changed:
        announce({"type": "round_rolled_back", "round": number, "reason": command.reason, "current": current,
                  "by": command.by})
    return Change(round=number, changed=changed, current=current)


async def restore(command: RestoreRound, *, rounds: Rounds, files: RoundFiles, announce: Announcer) -> Change:
    """Undo a rollback: the round is good again, its quarantine slice is lifted."""
    number = command.round
    async with rounds.change() as change:
        found = await _existing(change, number)
        changed = found.rolled_back
        if changed:
            await change.record([RoundRestored(round=number, after=await change.head(), by=command.by)])
    files.clear_rolled_back(number)
    current = await _point_current(rounds, files)
    if changed:
        announce({"type": "round_restored", "round": number, "current": current, "by": command.by})
    return Change(round=number, changed=changed, current=current)


async def promote(command: PromoteRound, *, rounds: Rounds, files: RoundFiles, announce: Announcer) -> Change:
    """Override a held round's verdict: it is promoted, and current if it is the newest promoted round that is not
    rolled back."""
    if not command.reason.strip():
        raise ValueError("a promotion needs a reason")
    number = command.round
    async with rounds.change() as change:
        found = await _existing(change, number)
        changed = found.state != "promoted"
        if changed:
            await change.record([RoundPromoted(round=number, reason=command.reason, by=command.by,
                                               after=await change.head())])
    current = await _point_current(rounds, files)
    if changed:
        announce({"type": "round_promoted", "round": number, "reason": command.reason, "current": current,
                  "by": command.by})
    return Change(round=number, changed=changed, current=current)


async def register_consumption(command: RegisterConsumption, *, rounds: Rounds, files: RoundFiles) -> bool:
    """A trainer registers that its run used the round, training which model at which stage; False when that run
    was registered already. The log is the record; consumption.json beside the round's files repeats it, and
    manifest.json, published with the round, is never rewritten."""
    async with rounds.change(lock=False) as change:  # a consumption does not wait for a build
        await _existing(change, command.round)
        stored = await change.record([RoundConsumed(round=command.round, run_id=command.run_id, by=command.by,
                                                    model_version=command.model_version, stage=command.stage)])
        found = await _existing(change, command.round)  # with this run in it
    files.write_consumption(command.round, found.consumptions)
    return bool(stored)
