"""The ports in memory, for unit tests of the services: the log, the rounds and a round source (tests/contract)."""

from __future__ import annotations

from store.memory.log import MemoryEventStore, MemoryLog
from store.memory.readmodel import RoundsReadModel
from store.memory.rounds import MemoryRounds, MemoryRoundsChange
from store.memory.roundsource import MemoryRoundSource, MemorySnapshot, empty_report

__all__ = [
    "MemoryEventStore",
    "MemoryLog",
    "MemoryRoundSource",
    "MemoryRounds",
    "MemoryRoundsChange",
    "MemorySnapshot",
    "RoundsReadModel",
    "empty_report",
]
