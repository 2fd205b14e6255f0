"""On-call operations on published rounds: rollback, restore, the `current` pointer, consumption records.

Every decision is an event first (RoundRolledBack, RoundRestored, RoundConsumed); the files follow: a marker
in a rolled-back round's directory and the `current` symlink, swapped atomically. Nothing here reads or
rewrites a round's data files, so a rollback takes the same time whatever the round's size.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from store.eventstore import head
from store.projections import record
from store.rounds import (
    SLICE_FIELDS,
    current_round,
    round_by_number,
    round_consumed,
    round_restored,
    round_rolled_back,
)

ROUNDS_LOCK = 0x526F756E  # advisory lock: one builder or on-call change of the rounds at a time
MARKER = "ROLLED_BACK"
# Sends a message to the rounds topic. One with a prepare() method (KafkaAnnouncer) has it called by a round build
# once every row is read (its builder process started long before), to get ready in the background.
Announce = Callable[[dict[str, Any]], None]


class KafkaAnnouncer:
    """Announces round changes on the rounds topic (kafka-python), waiting for the broker's ack."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic

    def prepare(self) -> None:
        """Begin importing kafka-python (a few tenths of a second) in the background, so it is done by the time a
        change is announced. A round build calls this once every row is read, long after its builder process was
        forked: a fork is only made while this process runs a single thread (flywheel.services.build_round)."""
        threading.Thread(target=importlib.import_module, args=("kafka",), name="import-kafka", daemon=True).start()

    def __call__(self, message: dict[str, Any]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False)
        try:
            producer.send(self.topic, value=orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).get(timeout=30)
        finally:
            producer.close()


def kafka_announcer(bootstrap: str, topic: str) -> Announce:
    """Announce round changes on the rounds topic."""
    return KafkaAnnouncer(bootstrap, topic)


def round_dir(root: Path, number: int) -> Path:
    return root / f"round-{number:04d}"


def parse_slice(specs: list[str]) -> dict[str, str] | None:
    """`app_id=support`, `since=2026-11-01T00:00:00+00:00` … → a slice filter; raises ValueError when bad."""
    if not specs:
        return None
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in SLICE_FIELDS or not value:
            raise ValueError(f"bad --quarantine {spec!r}: use one of {', '.join(f'{f}=VALUE' for f in SLICE_FIELDS)}")
        if name in ("since", "until"):
            at = datetime.fromisoformat(value)
            if at.tzinfo is None:
                raise ValueError(f"{name} needs a time zone: {value!r}")
            value = at.isoformat()
        out[name] = value
    return out


def point_current(root: Path, number: int | None) -> None:
    """Make `root/current` point at round `number` (or remove it), atomically: readers see old or new."""
    link = root / "current"
    if number is None:
        link.unlink(missing_ok=True)
        return
    tmp = root / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(round_dir(root, number).name)
    os.replace(tmp, link)


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    round: int
    changed: bool  # False: it already was so (idempotent)
    current: int | None  # the current round afterwards


async def _lock(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", [ROUNDS_LOCK])


async def rollback(
    conn: psycopg.AsyncConnection, root: Path, number: int, *, reason: str, quarantine: dict[str, str] | None,
    announce: Announce,
) -> Change:
    """Roll round `number` back; with `quarantine`, that slice of events is left out of every later build."""
    if not reason.strip():
        raise ValueError("a rollback needs a reason")
    async with conn.transaction():
        await _lock(conn)
        found = await round_by_number(conn, number)
        if found is None:
            raise LookupError(f"no round {number}")
        changed = not found["rolled_back"]
        if changed:
            await record(conn, [round_rolled_back(number, reason, quarantine, await head(conn))])
        now = await current_round(conn)
    current = None if now is None else int(now["number"])
    marker = round_dir(root, number) / MARKER
    if marker.parent.exists():
        marker.write_bytes(orjson.dumps({"round": number, "reason": found["rollback_reason"] if not changed
                                         else reason, "quarantine": quarantine}, option=orjson.OPT_INDENT_2))
    point_current(root, current)
    if changed:
        announce({"type": "round_rolled_back", "round": number, "reason": reason, "current": current})
    return Change(round=number, changed=changed, current=current)


async def restore(conn: psycopg.AsyncConnection, root: Path, number: int, *, announce: Announce) -> Change:
    """Undo a rollback: the round is good again, its quarantine slice is lifted."""
    async with conn.transaction():
        await _lock(conn)
        found = await round_by_number(conn, number)
        if found is None:
            raise LookupError(f"no round {number}")
        changed = bool(found["rolled_back"])
        if changed:
            await record(conn, [round_restored(number, await head(conn))])
        now = await current_round(conn)
    current = None if now is None else int(now["number"])
    (round_dir(root, number) / MARKER).unlink(missing_ok=True)
    point_current(root, current)
    if changed:
        announce({"type": "round_restored", "round": number, "current": current})
    return Change(round=number, changed=changed, current=current)


async def consume(conn: psycopg.AsyncConnection, root: Path, number: int, run_id: str) -> bool:
    """A trainer registers that run `run_id` used round `number` (the training-consumption manifest)."""
    async with conn.transaction():
        found = await round_by_number(conn, number)
        if found is None:
            raise LookupError(f"no round {number}")
        stored = await record(conn, [round_consumed(number, run_id)])
    runs = sorted({*found["consumed_by"], run_id})
    (round_dir(root, number) / "consumption.json").write_bytes(
        orjson.dumps({"round": number, "runs": runs}, option=orjson.OPT_INDENT_2))
    return bool(stored)
