"""The candidate_groups read model: CandidatesGenerated and CandidatesSelected events projected, and queried."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import CandidatesGenerated, CandidatesSelected
from flywheel.domain.log import StoredEvent


async def project_candidates(cur: psycopg.AsyncCursor[Any], events: Sequence[StoredEvent]) -> None:
    """Apply CandidatesGenerated / CandidatesSelected events (in position order) to candidate_groups."""
    for e in events:
        d = e.data
        if e.type == CandidatesGenerated.TYPE:
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
        elif e.type == CandidatesSelected.TYPE:
            p = d["payload"]
            await cur.execute(
                "UPDATE candidate_groups SET selected_position = %s, selection = %s, margin = %s WHERE group_id = %s",
                (e.position, orjson.dumps(p).decode(), p["margin"], d["group_id"]),
            )


async def unselected(conn: psycopg.AsyncConnection, sample_id: str | None) -> list[dict[str, Any]]:
    """Candidate groups without a selection yet (of one sample, or all), oldest first, with the model version
    that generated them."""
    where = "AND sample_id = %s::uuid" if sample_id else ""
    cur = await conn.execute(
        "SELECT group_id::text, prompt_key, prompt, candidates, model_version FROM candidate_groups"
        f" WHERE selected_position IS NULL {where} ORDER BY position",
        [sample_id] if sample_id else [],
    )
    return [{"group_id": g, "prompt_key": k, "prompt": p, "candidates": c, "model_version": m}
            for g, k, p, c, m in await cur.fetchall()]
