"""Signals as a read model that follows the event log.

A projector re-derives (flywheel.signals.derive) every prompt group that the events past its
checkpoint touched, replaces the groups' rows and moves the checkpoint, in one transaction. It runs
a moment behind ingest and takes everything committed since its last run at once, so a hot prompt
group is derived once per run, not once per ingest batch. derive is a pure function of a group's
interactions and feedback, so the streaming path, a replay and `replay --check` give the same rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from flywheel.signals import FeedbackRecord, InteractionRecord, SignalConfig, Signals, derive

CHECKPOINT = "signals"
_COLUMNS = (
    "signal_id, kind, prompt_key, rule, rule_version, interaction_id, app_id, model_version, prompt_version,"
    " consent, disagreement, status, ordinal, position, occurred_at, data"
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
    interaction judged there, and groups that got a second response there."""
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
        """,
        {"after": after, "upto": upto},
    )
    return sorted(row[0] for row in await cur.fetchall())


async def load_groups(
    cur: psycopg.AsyncCursor[Any], keys: list[str], upto: int | None = None
) -> dict[str, tuple[list[InteractionRecord], list[FeedbackRecord]]]:
    """The interactions and feedback of these prompt groups (only events at or before `upto`, when given)."""
    upto = 2**62 if upto is None else upto
    groups: dict[str, tuple[list[InteractionRecord], list[FeedbackRecord]]] = defaultdict(lambda: ([], []))
    await cur.execute(
        "SELECT prompt_key, interaction_id, event_id::text, position, app_id, model_version, prompt_version,"
        " user_id_hash, consent_training, occurred_at, messages, response, tags"
        " FROM interactions WHERE prompt_key = ANY(%s) AND position <= %s",
        [keys, upto],
    )
    for key, iid, eid, pos, app, model, prompt, user, consent, at, messages, response, tags in await cur.fetchall():
        groups[key][0].append(InteractionRecord(
            interaction_id=iid, event_id=eid, position=pos, app_id=app, model_version=model,
            prompt_version=prompt, user_id_hash=user, consent_training=consent, occurred_at=at,
            messages=tuple(messages), response=response, tags=tuple(tags), prompt_key=key,
        ))
    await cur.execute(
        "SELECT i.prompt_key, f.event_id::text, f.position, f.type, f.interaction_id, f.user_id_hash,"
        " f.consent_training, f.occurred_at, f.payload"
        " FROM feedback f JOIN interactions i USING (interaction_id)"
        " WHERE i.prompt_key = ANY(%s) AND f.position <= %s AND i.position <= %s",
        [keys, upto, upto],
    )
    for key, eid, pos, kind, iid, user, consent, at, payload in await cur.fetchall():
        groups[key][1].append(FeedbackRecord(
            event_id=eid, position=pos, type=kind, interaction_id=iid, user_id_hash=user,
            consent_training=consent, occurred_at=at, payload=payload,
        ))
    return groups


def newest_sources(
    interactions: Iterable[InteractionRecord], feedback: Iterable[FeedbackRecord]
) -> dict[str, tuple[int, datetime]]:
    """Event id -> (position, occurred_at) of a group's events, to date each record by its newest source."""
    sources = {i.event_id: (i.position, i.occurred_at) for i in interactions}
    sources.update({f.event_id: (f.position, f.occurred_at) for f in feedback})
    return sources


def rows(key: str, signals: Signals, sources: dict[str, tuple[int, datetime]]) -> Iterable[tuple[Any, ...]]:
    """One row per derived record, in derive's order: the columns queries filter on, its newest source
    event (`sources`: see newest_sources), and the whole record as JSON."""
    kinds: list[tuple[str, str, Sequence[Any]]] = [
        ("pair", "pair_id", signals.pairs),
        ("kto", "label_id", signals.kto_labels),
        ("sft", "sample_id", signals.sft_samples),
        ("hard_case", "case_id", signals.hard_cases),
        ("disagreement", "disagreement_id", signals.disagreements),
    ]
    ordinal = 0
    for kind, id_field, records in kinds:
        for r in records:
            position, occurred_at = max(sources[e] for e in r.source_event_ids)
            # orjson serialises the frozen dataclasses directly (dataclasses.asdict deep-copies: 5x slower)
            yield (
                getattr(r, id_field), kind, key, getattr(r, "rule", kind), getattr(r, "rule_version", 1),
                getattr(r, "interaction_id", None) or getattr(r, "rejected_interaction_id", None),
                getattr(r, "app_id", None), getattr(r, "model_version", None), getattr(r, "prompt_version", None),
                r.consent, getattr(r, "disagreement", kind == "disagreement"), getattr(r, "status", None),
                ordinal, position, occurred_at, orjson.dumps(r).decode(),
            )
            ordinal += 1


async def derive_groups(
    cur: psycopg.AsyncCursor[Any], keys: Sequence[str], config: SignalConfig, *, upto: int
) -> int:
    """Replace the signal rows of these prompt groups with a fresh derivation from the log up to `upto`
    (so the read model at a checkpoint is exactly the log up to it); returns the row count."""
    count = 0
    for start in range(0, len(keys), _GROUPS_PER_QUERY):
        chunk = list(keys[start:start + _GROUPS_PER_QUERY])
        groups = await load_groups(cur, chunk, upto=upto)
        await cur.execute("DELETE FROM signals WHERE prompt_key = ANY(%s)", [chunk])
        async with cur.copy(f"COPY signals ({_COLUMNS}) FROM STDIN") as copy:
            for key in chunk:
                interactions, feedback = groups[key]
                sources = newest_sources(interactions, feedback)
                for row in rows(key, derive(interactions, feedback, config), sources):
                    await copy.write_row(row)
                    count += 1
    return count


_GROUPS_PER_QUERY = 2000  # bounds the memory of one load


async def catch_up(
    conn: psycopg.AsyncConnection, config: SignalConfig, *, max_events: int = 50_000, wait: bool = False
) -> Progress | None:
    """One projector run over at most max_events of the log past the checkpoint, in one transaction.

    Returns None when another worker's projector holds the checkpoint (unless `wait`): one runs at a
    time, whichever worker gets there first. The log is safe to follow by position: appends number
    events under a table lock, so once a position is visible every lower one is too.
    """
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
        if upto <= after:
            return Progress(after, after, 0, 0)
        keys = await touched_groups(cur, after, upto)
        count = await derive_groups(cur, keys, config, upto=upto)
        await cur.execute("UPDATE checkpoints SET position = %s WHERE name = %s", [upto, CHECKPOINT])
    return Progress(after, upto, len(keys), count)
