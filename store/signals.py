"""Signals as a read model: each touched prompt group is re-derived (flywheel.signals.derive) and its rows
replaced, inside the ingest transaction. derive is a pure function of the group's events, so the
streaming path, a replay and `replay --check` give the same rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg

from flywheel.signals import FeedbackRecord, InteractionRecord, SignalConfig, Signals, derive
from store.eventstore import StoredEvent

_COLUMNS = (
    "signal_id, kind, prompt_key, rule, rule_version, interaction_id, app_id, model_version, prompt_version,"
    " consent, disagreement, status, data"
)


def _referenced(e: StoredEvent) -> tuple[str, ...]:
    p = e.data["payload"]
    if e.type == "comparison":
        return (p["chosen_interaction_id"], p["rejected_interaction_id"])
    if e.type == "regenerate":
        return (e.data["interaction_id"], p["new_interaction_id"])
    return (e.data["interaction_id"],)


async def _touched_groups(cur: psycopg.AsyncCursor[Any], events: Sequence[StoredEvent]) -> list[str]:
    """Prompt groups whose signals may have changed: those that got feedback, or a second response."""
    judged = sorted({i for e in events if e.type != "interaction" for i in _referenced(e)})
    new = sorted({e.data["interaction_id"] for e in events if e.type == "interaction"})
    await cur.execute(
        """
        SELECT DISTINCT prompt_key FROM interactions WHERE interaction_id = ANY(%s)
        UNION
        SELECT prompt_key FROM interactions
        WHERE prompt_key IN (SELECT prompt_key FROM interactions WHERE interaction_id = ANY(%s))
        GROUP BY prompt_key HAVING count(*) > 1
        """,
        [judged, new],
    )
    return sorted(row[0] for row in await cur.fetchall())


async def _load(
    cur: psycopg.AsyncCursor[Any], keys: list[str]
) -> dict[str, tuple[list[InteractionRecord], list[FeedbackRecord]]]:
    groups: dict[str, tuple[list[InteractionRecord], list[FeedbackRecord]]] = defaultdict(lambda: ([], []))
    await cur.execute(
        "SELECT prompt_key, interaction_id, event_id::text, position, app_id, model_version, prompt_version,"
        " user_id_hash, consent_training, occurred_at, messages, response, tags"
        " FROM interactions WHERE prompt_key = ANY(%s)",
        [keys],
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
        " FROM feedback f JOIN interactions i USING (interaction_id) WHERE i.prompt_key = ANY(%s)",
        [keys],
    )
    for key, eid, pos, kind, iid, user, consent, at, payload in await cur.fetchall():
        groups[key][1].append(FeedbackRecord(
            event_id=eid, position=pos, type=kind, interaction_id=iid, user_id_hash=user,
            consent_training=consent, occurred_at=at, payload=payload,
        ))
    return groups


def rows(key: str, signals: Signals) -> Iterable[tuple[Any, ...]]:
    """One row per derived record: the columns queries filter on, and the whole record as JSON."""
    kinds: list[tuple[str, str, Sequence[Any]]] = [
        ("pair", "pair_id", signals.pairs),
        ("kto", "label_id", signals.kto_labels),
        ("sft", "sample_id", signals.sft_samples),
        ("hard_case", "case_id", signals.hard_cases),
        ("disagreement", "disagreement_id", signals.disagreements),
    ]
    for kind, id_field, records in kinds:
        for r in records:
            # orjson serialises the frozen dataclasses directly (dataclasses.asdict deep-copies: 5x slower)
            yield (
                getattr(r, id_field), kind, key, getattr(r, "rule", kind), getattr(r, "rule_version", 1),
                getattr(r, "interaction_id", None) or getattr(r, "rejected_interaction_id", None),
                getattr(r, "app_id", None), getattr(r, "model_version", None), getattr(r, "prompt_version", None),
                r.consent, getattr(r, "disagreement", kind == "disagreement"), getattr(r, "status", None),
                orjson.dumps(r).decode(),
            )


async def rederive(conn: psycopg.AsyncConnection, events: Sequence[StoredEvent], config: SignalConfig) -> int:
    """Replace the signals of every prompt group these (just projected) events touched."""
    async with conn.cursor() as cur:
        keys = await _touched_groups(cur, events)
        if not keys:
            return 0
        groups = await _load(cur, keys)
        await cur.execute("DELETE FROM signals WHERE prompt_key = ANY(%s)", [keys])
        count = 0
        async with cur.copy(f"COPY signals ({_COLUMNS}) FROM STDIN") as copy:
            for key in keys:
                interactions, feedback = groups[key]
                for row in rows(key, derive(interactions, feedback, config)):
                    await copy.write_row(row)
                    count += 1
    return count
