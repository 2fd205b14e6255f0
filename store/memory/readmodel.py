"""The rounds and quarantine read models in memory, folded from the round events as store.rounds projects them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from flywheel.domain.events import (
    QuarantineItemsAdded,
    RoundConsumed,
    RoundPromoted,
    RoundPublished,
    RoundRestored,
    RoundRolledBack,
)
from flywheel.domain.log import StoredEvent
from flywheel.domain.rounds import QuarantineItem, QuarantineList
from flywheel.ports import Quarantine, RoundState
from store.rounds import quarantine_version


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackSlice:
    filters: dict[str, Any]
    reason: str
    active: bool


@dataclass(slots=True)
class RoundsReadModel:
    """Rounds by number, quarantine items by id, rollback slices by round. Its values are frozen, so `copy` is
    cheap and a copy is a snapshot."""

    rounds: dict[int, RoundState] = field(default_factory=dict)
    items: dict[str, QuarantineItem] = field(default_factory=dict)
    slices: dict[int, RollbackSlice] = field(default_factory=dict)

    def copy(self) -> RoundsReadModel:
        return RoundsReadModel(dict(self.rounds), dict(self.items), dict(self.slices))

    def apply(self, event: StoredEvent) -> None:
        """Fold one event in (in position order); events of other types change nothing here."""
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event.position, event.data["payload"])

    def current(self) -> RoundState | None:
        """The newest promoted round that is not rolled back."""
        return max((r for r in self.rounds.values() if not r.rolled_back and r.state == "promoted"),
                   key=lambda r: r.number, default=None)

    def rolled_back_since(self, position: int) -> list[int]:
        return sorted(n for n, r in self.rounds.items() if r.rolled_back and (r.rolled_back_position or 0) > position)

    def next_number(self) -> int:
        return max(self.rounds, default=0) + 1

    def quarantine(self) -> Quarantine:
        items = tuple(self.items[i] for i in sorted(self.items))
        slices = [{"round": n, **s.filters} for n, s in sorted(self.slices.items()) if s.active]
        version = quarantine_version([i.item_id for i in items], slices)
        return Quarantine(version=version, items=QuarantineList(version=version, items=items), slices=slices)


def _published(model: RoundsReadModel, position: int, payload: dict[str, Any]) -> None:
    p = RoundPublished.of(payload)
    if p.round in model.rounds:  # the rounds table's primary key: the unit of work fails
        raise ValueError(f"round {p.round} is published already")
    model.rounds[p.round] = RoundState(
        number=p.round, position=position, path=p.path, content_hash=p.content_hash, watermark=p.watermark,
        parent=p.parent, quarantine_version=p.quarantine_version, summary=p.summary, rolled_back=False,
        rollback_reason=None, consumed_by=(), state=p.state, promotion=tuple(p.promotion),
        history=({"what": f"built ({p.state})", "by": p.by or None, "position": position,
                  **({"reason": "; ".join(p.held_because)} if p.held_because else {})},))


def _noted(found: RoundState, entry: dict[str, Any], position: int, payload: dict[str, Any]) -> RoundState:
    return replace(found, history=(*found.history, {**entry, "by": payload.get("by") or None, "position": position}))


def _promoted(model: RoundsReadModel, position: int, payload: dict[str, Any]) -> None:
    if (found := model.rounds.get(payload["round"])) is not None:
        model.rounds[found.number] = _noted(replace(found, state="promoted"),
                                            {"what": "promoted", "reason": payload["reason"]}, position, payload)


def _rolled_back(model: RoundsReadModel, position: int, payload: dict[str, Any]) -> None:
    r = RoundRolledBack.of(payload)
    if (found := model.rounds.get(r.round)) is not None:
        model.rounds[r.round] = _noted(replace(found, rolled_back=True, rollback_reason=r.reason,
                                               rolled_back_position=position),
                                       {"what": "rolled back", "reason": r.reason}, position, payload)
    if r.quarantine:
        model.slices[r.round] = RollbackSlice(filters=dict(r.quarantine), reason=r.reason, active=True)


def _restored(model: RoundsReadModel, position: int, payload: dict[str, Any]) -> None:
    number = payload["round"]
    if (found := model.rounds.get(number)) is not None:
        model.rounds[number] = _noted(replace(found, rolled_back=False, rollback_reason=None,
                                              rolled_back_position=None),
                                      {"what": "restored"}, position, payload)
    if (lifted := model.slices.get(number)) is not None:
        model.slices[number] = replace(lifted, active=False)


def _consumed(model: RoundsReadModel, position: int, payload: dict[str, Any]) -> None:
    consumed = RoundConsumed.of(payload)
    number, run = consumed.round, consumed.run_id
    if (found := model.rounds.get(number)) is not None and run not in found.consumed_by:
        model.rounds[number] = _noted(replace(
            found, consumed_by=(*found.consumed_by, run),
            consumptions=(*found.consumptions, {**consumed.record(), "position": position})),
            {"what": consumed.describe()}, position, payload)


def _items_added(model: RoundsReadModel, position: int, payload: dict[str, Any]) -> None:
    added = QuarantineItemsAdded.of(payload)
    for i in added.items:
        model.items.setdefault(i.item_id, QuarantineItem(item_id=i.item_id, list_name=added.list_name,
                                                         prompt=i.prompt, answer=i.answer))


_HANDLERS: dict[str, Callable[[RoundsReadModel, int, dict[str, Any]], None]] = {
    RoundPublished.TYPE: _published,
    RoundPromoted.TYPE: _promoted,
    RoundRolledBack.TYPE: _rolled_back,
    RoundRestored.TYPE: _restored,
    RoundConsumed.TYPE: _consumed,
    QuarantineItemsAdded.TYPE: _items_added,
}
