"""Candidate groups in the log: CandidatesGenerated and CandidatesSelected events, and their read model."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from store.eventstore import NewEvent, StoredEvent

CANDIDATES_GENERATED = "candidates_generated"
CANDIDATES_SELECTED = "candidates_selected"
_NAMESPACE = uuid.UUID("0c6f2b8e-8d1b-4f4e-a7d5-2f0d7b9e4c31")


def group_id(sample_id: str, key: str, payload: dict[str, Any]) -> str:
    """Generating the same prompt of the same sample with the same model and sampling names the same group,
    so re-running `flywheel generate` after a crash appends only what is missing."""
    what = orjson.dumps([payload["model_version"], payload["generator"], payload["sampling"]],
                        option=orjson.OPT_SORT_KEYS).decode()
    return str(uuid.uuid5(_NAMESPACE, f"{CANDIDATES_GENERATED}:{sample_id}:{key}:{what}"))


def generated_event(sample_id: str, case: dict[str, Any], payload: dict[str, Any]) -> NewEvent:
    """The CandidatesGenerated event of one group for a sampled hard case (its prompt_key, app_id, tags);
    payload: sampling.generation.CandidateGroup.to_event_payload()."""
    key = case["prompt_key"]
    return NewEvent.internal(group_id(sample_id, key, payload), CANDIDATES_GENERATED, payload, sample_id=sample_id,
                             prompt_key=key, app_id=case.get("app_id"), tags=list(case.get("tags") or ()))


def selected_event(group: str, selector_version: str, payload: dict[str, Any]) -> NewEvent:
    """The CandidatesSelected event about one group, named by the group and the scorers/config that judged it."""
    event_id = str(uuid.uuid5(_NAMESPACE, f"{CANDIDATES_SELECTED}:{group}:{selector_version}"))
    return NewEvent.internal(event_id, CANDIDATES_SELECTED, payload, group_id=group,
                             selector_version=selector_version)


async def project_candidates(cur: psycopg.AsyncCursor[Any], events: Sequence[StoredEvent]) -> None:
    """Apply CandidatesGenerated / CandidatesSelected events (in position order) to candidate_groups."""
    for e in events:
        d = e.data
        if e.type == CANDIDATES_GENERATED:
            p = d["payload"]
            await cur.execute(
                "INSERT INTO candidate_groups (group_id, position, sample_id, prompt_key, model_version, generator,"
                " app_id, tags, prompt, candidates, sampling) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (d["event_id"], e.position, d["sample_id"], d["prompt_key"], p["model_version"], p["generator"],
                 d["app_id"], d["tags"],
                 orjson.dumps(p["prompt"]).decode(), orjson.dumps(p["candidates"]).decode(),
                 orjson.dumps({**p["sampling"], "seed": p["seed"], "prompt_tokens": p["prompt_tokens"],
                               "completion_tokens": p["completion_tokens"]}).decode()),
            )
        elif e.type == CANDIDATES_SELECTED:
            p = d["payload"]
            await cur.execute(
                "UPDATE candidate_groups SET selected_position = %s, selection = %s, margin = %s WHERE group_id = %s",
                (e.position, orjson.dumps(p).decode(), p["margin"], d["group_id"]),
            )


async def unselected(conn: psycopg.AsyncConnection, sample_id: str | None) -> list[dict[str, Any]]:
    """Candidate groups without a selection yet (of one sample, or all), oldest first."""
    where = "AND sample_id = %s::uuid" if sample_id else ""
    cur = await conn.execute(
        "SELECT group_id::text, prompt_key, prompt, candidates FROM candidate_groups"
        f" WHERE selected_position IS NULL {where} ORDER BY position",
        [sample_id] if sample_id else [],
    )
    return [{"group_id": g, "prompt_key": k, "prompt": p, "candidates": c} for g, k, p, c in await cur.fetchall()]
