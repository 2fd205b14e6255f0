"""The hard-case sampler's adapter: prompt candidates read at a watermark, the chosen cases recorded as an event."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

import psycopg

from sampling.hardcases import PromptCandidate, SampledHardCases, SamplerConfig, prompt_text
from store.eventstore import NewEvent, StoredEvent, append

HARD_CASES_SAMPLED = "hard_cases_sampled"
_NAMESPACE = uuid.UUID("5b0e7c1e-3d7f-4a43-9d8e-6b1f4f1c2a90")


async def prompt_candidates(
    conn: psycopg.AsyncConnection, watermark: int
) -> tuple[list[PromptCandidate], dict[str, list[dict[str, Any]]]]:
    """Every prompt with negative feedback, a regeneration, a substantive edit, a disagreement or a prior
    reward margin, as the log stood at `watermark`; and each one's conversation (for generation)."""
    cur = await conn.execute(
        """
        WITH judged AS (
            SELECT i.prompt_key,
                   count(*) FILTER (WHERE f.type = 'thumbs' AND f.payload ->> 'value' = 'down') AS thumbs_down,
                   count(*) FILTER (WHERE f.type = 'regenerate') AS regenerations,
                   bool_and(f.consent_training) AS consent
            FROM feedback f JOIN interactions i USING (interaction_id)
            WHERE f.position <= %(w)s AND i.position <= %(w)s
            GROUP BY i.prompt_key
        ), derived AS (
            -- substantive edits and disagreements are decided by the signal rules; count those whose
            -- every source event is inside the watermark
            SELECT s.prompt_key,
                   count(*) FILTER (WHERE s.kind = 'pair' AND s.rule = 'edit_pair') AS edits,
                   count(*) FILTER (WHERE s.kind = 'disagreement') AS disagreements
            FROM signals s
            WHERE (s.kind = 'disagreement' OR s.rule = 'edit_pair') AND NOT EXISTS (
                SELECT 1 FROM json_array_elements_text(s.data -> 'source_event_ids') src(id)
                JOIN events e ON e.event_id = src.id::uuid WHERE e.position > %(w)s)
            GROUP BY s.prompt_key
        ), margins AS (
            SELECT prompt_key, (array_agg(margin ORDER BY selected_position DESC))[1] AS margin
            FROM candidate_groups WHERE selected_position <= %(w)s AND margin IS NOT NULL GROUP BY prompt_key
        ), hard AS (
            SELECT prompt_key FROM judged WHERE thumbs_down + regenerations > 0
            UNION SELECT prompt_key FROM derived UNION SELECT prompt_key FROM margins
        )
        SELECT i.prompt_key,
               array_agg(i.interaction_id ORDER BY i.interaction_id),
               (array_agg(i.app_id ORDER BY i.position DESC))[1],
               (array_agg(i.model_version ORDER BY i.position DESC))[1],
               (array_agg(i.interaction_id ORDER BY i.position DESC))[1],
               bool_and(i.consent_training) AND coalesce(min(j.consent::int), 1) = 1,
               coalesce(min(j.thumbs_down), 0), coalesce(min(j.regenerations), 0),
               coalesce(min(d.edits), 0), coalesce(min(d.disagreements), 0), min(m.margin),
               max(i.position)
        FROM interactions i
        JOIN hard h USING (prompt_key)
        LEFT JOIN judged j USING (prompt_key)
        LEFT JOIN derived d USING (prompt_key)
        LEFT JOIN margins m USING (prompt_key)
        WHERE i.position <= %(w)s
        GROUP BY i.prompt_key
        ORDER BY i.prompt_key
        """,
        {"w": watermark},
    )
    rows = await cur.fetchall()
    latest = [row[4] for row in rows]
    cur = await conn.execute(
        "SELECT interaction_id, messages, tags FROM interactions WHERE interaction_id = ANY(%s)", [latest]
    )
    conversation = {iid: (messages, tags) for iid, messages, tags in await cur.fetchall()}
    candidates, prompts = [], {}
    for key, ids, app, model, newest, consent, down, regens, edits, disputes, margin, last in rows:
        messages, tags = conversation[newest]
        prompts[key] = messages
        candidates.append(PromptCandidate(
            prompt_key=key, interaction_ids=tuple(ids), app_id=app, model_version=model, tags=tuple(tags),
            consent=bool(consent), thumbs_down=int(down), regenerations=int(regens), edits=int(edits),
            disagreements=int(disputes), prior_reward_margin=None if margin is None else float(margin),
            text=prompt_text(messages), last_position=int(last),
        ))
    return candidates, prompts


def sample_id(config: SamplerConfig, watermark: int) -> str:
    """The same config, seed and watermark name the same sample: recording it twice is a no-op."""
    return str(uuid.uuid5(_NAMESPACE, f"{HARD_CASES_SAMPLED}:{config.version()}:{config.seed}:{watermark}"))


async def record_sample(
    conn: psycopg.AsyncConnection, result: SampledHardCases, config: SamplerConfig,
    prompts: dict[str, list[dict[str, Any]]],
) -> tuple[str, bool]:
    """Append the HardCasesSampled event (in the caller's transaction); returns its id and whether it is new."""
    event_id = sample_id(config, result.watermark)
    stored = await append(conn, [NewEvent.internal(event_id, HARD_CASES_SAMPLED, {
        "watermark": result.watermark,
        "seed": result.seed,
        "config": asdict(config),
        "config_version": result.config_version,
        "clusters": result.clusters,
        "excluded": result.excluded_counts,
        "chosen": [{**asdict(c), "messages": prompts[c.prompt_key]} for c in result.chosen],
    })])
    return event_id, bool(stored)


async def load_sample(conn: psycopg.AsyncConnection, event_id: str | None) -> StoredEvent | None:
    """A recorded sample by id, or the newest one."""
    where, params = ("AND event_id = %s::uuid", [event_id]) if event_id else ("", [])
    cur = await conn.execute(
        f"SELECT position, event_id::text, type, data FROM events WHERE type = '{HARD_CASES_SAMPLED}' {where}"
        " ORDER BY position DESC LIMIT 1",
        params,
    )
    row = await cur.fetchone()
    return StoredEvent(*row) if row else None
