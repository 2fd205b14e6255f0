"""Signals as a read model that follows the event log.

A projector re-derives (flywheel.domain.signals.derive) every prompt group that the events past its
checkpoint touched, replaces the groups' rows and moves the checkpoint, in one transaction. It runs
a moment behind ingest and takes everything committed since its last run at once, so a hot prompt
group is derived once per run, not once per ingest batch. derive is a pure function of a group's
interactions and feedback, so the streaming path, a replay and `replay --check` give the same rows.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from flywheel.domain.signals import (
    Disagreement,
    FeedbackRecord,
    HardCase,
    InteractionRecord,
    KTOLabel,
    PreferencePair,
    PromptGroup,
    Record,
    SFTSample,
    SignalConfig,
    Unit,
    derive_units,
    order_key,
)

CHECKPOINT = "signals"
_COLUMNS = (
    "signal_id, kind, prompt_key, rule, rule_version, interaction_id, app_id, model_version, prompt_version,"
    " consent, disagreement, status, sort_key, position, occurred_at, copy_key, tie, margin, chosen_length,"
    " rejected_length, sources, data"
)


async def checkpoint(conn: psycopg.AsyncConnection) -> int:
    """How far the signals read model has got: every event up to this position is derived (0 before the
    projector's first run). What a hard-case sample or a round reads signals at."""
    cur = await conn.execute("SELECT position FROM checkpoints WHERE name = %s", [CHECKPOINT])
    row = await cur.fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class Progress:
    """One projector run: the log range (after, upto] it applied and the prompt groups it re-derived."""

    after: int
    upto: int
    groups: int
    rows: int


async def touched_groups(cur: psycopg.AsyncCursor[Any], after: int, upto: int) -> list[str]:
    """Prompt groups whose signals events in (after, upto] may have changed: the groups of every
    interaction judged there, groups that got a second response there, and groups an erasure changed
    (store.erase) that the projector has not derived again yet."""
    await cur.execute(
        """
        SELECT DISTINCT prompt_key FROM interactions WHERE interaction_id IN (
            SELECT unnest(ARRAY[interaction_id, payload ->> 'chosen_interaction_id',
                                payload ->> 'rejected_interaction_id', payload ->> 'new_interaction_id'])
            FROM feedback WHERE position > %(after)s AND position <= %(upto)s)
        UNION
        SELECT prompt_key FROM interactions
        WHERE prompt_key IN (SELECT prompt_key FROM interactions WHERE position > %(after)s AND position <= %(upto)s)
        GROUP BY prompt_key HAVING count(*) > 1
        UNION
        SELECT prompt_key FROM rederive
        """,
        {"after": after, "upto": upto},
    )
    return sorted(row[0] for row in await cur.fetchall())


async def load_groups(
    cur: psycopg.AsyncCursor[Any], keys: list[str], upto: int | None = None, *, after: int = 0
) -> dict[str, tuple[list[InteractionRecord], list[FeedbackRecord]]]:
    """The interactions and feedback of these prompt groups at positions in (after, upto] (upto None: the
    head). Feedback is stored after the interactions it is about, so (after, upto] of a group is exactly what
    the log added to it there."""
    upto = 2**62 if upto is None else upto
    groups: dict[str, tuple[list[InteractionRecord], list[FeedbackRecord]]] = defaultdict(lambda: ([], []))
    await cur.execute(
        "SELECT prompt_key, interaction_id, event_id::text, position, app_id, model_version, prompt_version,"
        " user_id_hash, consent_training, occurred_at, messages, response, tags, tools, finish_reason"
        " FROM interactions WHERE prompt_key = ANY(%s) AND position > %s AND position <= %s",
        [keys, after, upto],
    )
    for (key, iid, eid, pos, app, model, prompt, user, consent, at, messages, response, tags, tools,
         finish_reason) in await cur.fetchall():
        groups[key][0].append(InteractionRecord(
            interaction_id=iid, event_id=eid, position=pos, app_id=app, model_version=model,
            prompt_version=prompt, user_id_hash=user, consent_training=consent, occurred_at=at,
            messages=tuple(messages), response=response, tags=tuple(tags), prompt_key=key,
            tools=tuple(tools or ()), finish_reason=finish_reason,
        ))
    await cur.execute(
        "SELECT i.prompt_key, f.event_id::text, f.position, f.type, f.interaction_id, f.user_id_hash,"
        " f.consent_training, f.occurred_at, f.payload"
        " FROM feedback f JOIN interactions i USING (interaction_id)"
        " WHERE i.prompt_key = ANY(%s) AND f.position > %s AND f.position <= %s AND i.position <= %s",
        [keys, after, upto, upto],
    )
    for key, eid, pos, kind, iid, user, consent, at, payload in await cur.fetchall():
        groups[key][1].append(FeedbackRecord(
            event_id=eid, position=pos, type=kind, interaction_id=iid, user_id_hash=user,
            consent_training=consent, occurred_at=at, payload=payload,
        ))
    return groups


_KINDS: dict[type, tuple[str, str, bytes]] = {  # record type -> kind, id field, rank of the kind in derive's order
    kind: (name, id_field, rank.to_bytes(1, "big"))
    for rank, (kind, name, id_field) in enumerate([
        (PreferencePair, "pair", "pair_id"), (KTOLabel, "kto", "label_id"), (SFTSample, "sft", "sample_id"),
        (HardCase, "hard_case", "case_id"), (Disagreement, "disagreement", "disagreement_id")])
}


def rows(key: str, records: Iterable[Record], g: PromptGroup) -> Iterator[tuple[Any, ...]]:
    """One row per derived record of group `g`: the columns queries filter on, its place in derive's order,
    its newest source event, and the whole record as JSON."""
    for r in records:
        kind, id_field, prefix = _KINDS[type(r)]
        position, occurred_at = g.newest(r.source_event_ids)
        pair = r if isinstance(r, PreferencePair) else None
        # orjson serialises the frozen dataclasses directly (dataclasses.asdict deep-copies: 5x slower)
        yield (
            getattr(r, id_field), kind, key, getattr(r, "rule", kind), getattr(r, "rule_version", 1),
            getattr(r, "interaction_id", None) or getattr(r, "rejected_interaction_id", None),
            getattr(r, "app_id", None), getattr(r, "model_version", None), getattr(r, "prompt_version", None),
            r.consent, getattr(r, "disagreement", kind == "disagreement"), getattr(r, "status", None),
            prefix + order_key(r, g.positions, g.interaction_positions), position, occurred_at, copy_key(r),
            *((pair.tie, pair.margin, len(pair.chosen), len(pair.rejected)) if pair else (None,) * 4),
            list(r.source_event_ids), orjson.dumps(r).decode(),
        )


def copy_key(record: object) -> bytes | None:
    """What makes two training records (pair, KTO label, SFT sample) the same to every round gate up to dedup,
    and equal in what flywheel.domain.rounds.row_from_signal makes of them: kind, consent, status (and when a pending
    pair is decided), tags, and every value its body is made from. None for other records. A round reads every
    later record with the key of an earlier one as an exact copy of it (store.roundrows)."""
    if isinstance(record, PreferencePair):
        body: object = (record.prompt, record.chosen, record.rejected, *_offered(record.tools))
        decided_after = record.decided_after if record.status == "pending" else None
        parts: tuple[object, ...] = ("pair", record.consent, record.status, decided_after, record.tags, body)
    elif isinstance(record, KTOLabel):
        parts = ("kto", record.consent, None, None, record.tags,
                 (record.prompt, record.completion, record.desirable, *_offered(record.tools)))
    elif isinstance(record, SFTSample):
        parts = ("sft", record.consent, None, None, record.tags,
                 (*record.messages, *_offered(record.tools)) if record.tools else record.messages)
    else:
        return None
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _offered(tools: tuple[dict[str, Any], ...]) -> tuple[object, ...]:
    # Tools are part of a row's body when there are any; a record without keeps the key it always had.
    return (("tools", tools),) if tools else ()


@dataclass(slots=True)
class _Known:
    group: PromptGroup
    rows: dict[Unit, dict[str, bytes]]  # signal_id -> digest of the row written for it, by the unit that derived it
    counted: int = 0  # the group's size when the cache last counted it


@dataclass
class GroupCache:
    """What a long-lived projector remembers of the prompt groups it derived: each group as a PromptGroup and
    a digest of every row it wrote, by derive unit, as of checkpoint `position`. The next run reads only what
    the log added to a group, re-derives only the units those events changed (PromptGroup.add) and rewrites
    only the rows that differ, so a hot group costs its new events, not its size. Bounded by `max_records`
    inputs (the groups derived longest ago go first), except that the biggest group of the last run stays.
    It is only trusted while the checkpoint is where this process left it: another worker's projector, a
    replay or a schema renewal moves it, and the cache starts over; so does a run that failed, having grown
    groups its transaction never wrote."""

    max_records: int
    position: int | None = None
    _groups: OrderedDict[str, _Known] = field(default_factory=OrderedDict)
    _records: int = 0

    def start(self, checkpoint: int) -> None:
        """A run begins at `checkpoint`: what the cache holds is only of use if it was left there."""
        if self.position != checkpoint:
            self.clear()
            self.position = checkpoint

    def forget(self, keys: Iterable[str]) -> None:
        """Groups changed other than by new events (an erasure): derived whole on their next run."""
        for key in keys:
            known = self._groups.pop(key, None)
            if known is not None:
                self._records -= known.counted

    def get(self, key: str) -> _Known | None:
        return self._groups.get(key)

    def commit(self, position: int, known: dict[str, _Known]) -> None:
        """The run that derived `known` up to `position` has committed."""
        for key, group in known.items():
            self._groups.pop(key, None)
            self._records += len(group.group) - group.counted
            group.counted = len(group.group)
            self._groups[key] = group
        # The run's biggest group stays whatever its size: a hot group evicted every run would be derived whole
        # every run, and the memory it holds is what deriving it takes anyway.
        biggest = max(known, key=lambda k: len(known[k].group), default=None)
        for key in list(self._groups):  # oldest first
            if self._records <= self.max_records:
                break
            if key != biggest:
                self._records -= self._groups.pop(key).counted
        self.position = position

    def clear(self) -> None:
        self._groups.clear()
        self._records, self.position = 0, None

    def __len__(self) -> int:
        return len(self._groups)


def _digest(row: tuple[Any, ...]) -> bytes:
    # Every other column follows from the record (its JSON, last) and the positions of its sources (the key).
    h = hashlib.blake2b(row[12], digest_size=16)
    h.update(row[-1].encode())
    return h.digest()


async def derive_groups(
    cur: psycopg.AsyncCursor[Any], keys: Sequence[str], config: SignalConfig, *, upto: int,
    cache: GroupCache | None = None,
) -> tuple[int, dict[str, _Known]]:
    """Replace the signal rows of these prompt groups with a fresh derivation from the log up to `upto`
    (so the read model at a checkpoint is exactly the log up to it). With a `cache` (GroupCache.start), a
    cached group reads only its new events, re-derives what they changed and rewrites the rows that differ.
    Returns (rows derived, what the cache keeps once the transaction commits)."""
    count, known = 0, {}
    for start in range(0, len(keys), _GROUPS_PER_QUERY):
        chunk = list(keys[start:start + _GROUPS_PER_QUERY])
        cached = {k: c for k in chunk if cache is not None and (c := cache.get(k)) is not None}
        fresh = [k for k in chunk if k not in cached]
        # Cached groups first: their stale rows go before any row is copied in (a changed row keeps its id).
        stale: list[tuple[str, str]] = []
        changed: list[tuple[Any, ...]] = []
        if cached:
            assert cache is not None and cache.position is not None
            added = await load_groups(cur, list(cached), upto=upto, after=cache.position)
            for key, old in cached.items():
                units = derive_units(old.group, old.group.add(*added[key]))
                for unit, records in units.items():
                    new = list(rows(key, records, old.group))
                    before, after = old.rows.pop(unit, {}), {row[0]: _digest(row) for row in new}
                    stale.extend((key, sid) for sid, d in before.items() if after.get(sid) != d)
                    changed.extend(row for row in new if before.get(row[0]) != after[row[0]])
                    if after:
                        old.rows[unit] = after
                    count += len(new)
                known[key] = old
        if stale:
            await cur.execute(
                "DELETE FROM signals s USING unnest(%s::text[], %s::text[]) d(prompt_key, signal_id)"
                " WHERE s.prompt_key = d.prompt_key AND s.signal_id = d.signal_id",
                [[k for k, _ in stale], [sid for _, sid in stale]],
            )
        groups = await load_groups(cur, fresh, upto=upto) if fresh else {}
        if fresh:
            await cur.execute("DELETE FROM signals WHERE prompt_key = ANY(%s)", [fresh])
        async with cur.copy(f"COPY signals ({_COLUMNS}) FROM STDIN") as copy:
            for row in changed:
                await copy.write_row(row)
            for key in fresh:
                g = PromptGroup(*groups[key], config)
                digests: dict[Unit, dict[str, bytes]] = {}
                for unit, records in derive_units(g, g.everything()).items():
                    for row in rows(key, records, g):
                        await copy.write_row(row)
                        if cache is not None:  # only a cache compares rows with what it wrote
                            digests.setdefault(unit, {})[row[0]] = _digest(row)
                        count += 1
                if cache is not None:
                    known[key] = _Known(g, digests)
    return count, known


_GROUPS_PER_QUERY = 2000  # bounds the memory of one load


_LEAD_LOCK = 0x5369676E  # advisory lock: the projector that derives signals while it lives


async def take_lead(conn: psycopg.AsyncConnection) -> bool:
    """Try to become the projector that derives signals, for as long as this session lives (its cache then
    stays valid from run to run; a projector that took turns with another would find the checkpoint moved and
    start over every time). Another worker's projector takes over when this session ends."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [_LEAD_LOCK])
    row = await cur.fetchone()
    return bool(row and row[0])


async def catch_up(
    conn: psycopg.AsyncConnection, config: SignalConfig, *, max_events: int = 50_000, wait: bool = False,
    cache: GroupCache | None = None,
) -> Progress | None:
    """One projector run over at most max_events of the log past the checkpoint, in one transaction.

    Returns None when another worker's projector holds the checkpoint (unless `wait`): one runs at a
    time, whichever worker gets there first. The log is safe to follow by position: appends number
    events under a table lock, so once a position is visible every lower one is too. A long-lived caller
    passes the same `cache` to every run (see GroupCache).
    """
    try:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("INSERT INTO checkpoints (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                              [CHECKPOINT])
            await cur.execute(
                f"SELECT position FROM checkpoints WHERE name = %s FOR UPDATE{'' if wait else ' SKIP LOCKED'}",
                [CHECKPOINT],
            )
            row = await cur.fetchone()
            if row is None:
                return None
            after = int(row[0])
            await cur.execute("SELECT coalesce(max(position), 0) FROM events")
            head = await cur.fetchone()
            upto = min(int(head[0]) if head else 0, after + max_events)
            # Groups an erasure changed: taken (and so owned by this run) in one statement.
            await cur.execute("DELETE FROM rederive RETURNING prompt_key")
            erased = sorted({row[0] for row in await cur.fetchall()})
            if upto <= after and not erased:
                return Progress(after, after, 0, 0)
            upto = max(upto, after)
            if cache is not None:
                cache.start(after)
                cache.forget(erased)
            keys = sorted(set(await touched_groups(cur, after, upto)) | set(erased))
            count, known = await derive_groups(cur, keys, config, upto=upto, cache=cache)
            await cur.execute("UPDATE checkpoints SET position = %s WHERE name = %s", [upto, CHECKPOINT])
    except BaseException:
        if cache is not None:
            cache.clear()  # its groups may have grown by events that this transaction never wrote
        raise
    if cache is not None:
        cache.commit(upto, known)
    return Progress(after, upto, len(keys), count)
