"""The hard-case sampler's adapter: prompt candidates read at a watermark, the chosen cases recorded as an event."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import HardCasesSampled
from flywheel.domain.log import StoredEvent
from flywheel.ports import InteractionFacts, Quarantine
from sampling.hardcases import PromptCandidate, prompt_text
from sampling.verifiers import SCALES
from store import keys
from store.audits import latest_probe_audits, user_pairs
from store.candidates import unselected
from store.erasures import erasure_list
from store.rounds import load_quarantine
from store.signals import checkpoint
from store.unit_of_work import PostgresLog


async def prompt_candidates(
    conn: psycopg.AsyncConnection, watermark: int
) -> tuple[list[PromptCandidate], dict[str, list[dict[str, Any]]]]:
    """Every prompt with negative feedback, a regeneration, a substantive edit, a disagreement or a prior
    reward margin, as the log stood at `watermark`; and each one's conversation (for generation). A prompt that
    a user whose training consent is withdrawn wrote or judged counts as without consent: the sampler leaves it
    out."""
    withdrawn = sorted((await erasure_list(conn)).excluded)
    cur = await conn.execute(
        """
        WITH judged AS (
            SELECT i.prompt_key,
                   count(*) FILTER (WHERE f.type = 'thumbs' AND f.payload ->> 'value' = 'down') AS thumbs_down,
                   count(*) FILTER (WHERE f.type = 'regenerate') AS regenerations,
                   bool_and(f.consent_training AND f.user_id_hash <> ALL(%(withdrawn)s)) AS consent
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
            SELECT prompt_key, (array_agg(margin ORDER BY selected_position DESC))[1] AS margin,
                   (array_agg(selection ->> 'decided_by' ORDER BY selected_position DESC))[1] AS decided_by
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
               bool_and(i.consent_training AND i.user_id_hash <> ALL(%(withdrawn)s))
               AND coalesce(min(j.consent::int), 1) = 1,
               coalesce(min(j.thumbs_down), 0), coalesce(min(j.regenerations), 0),
               coalesce(min(d.edits), 0), coalesce(min(d.disagreements), 0), min(m.margin),
               min(m.decided_by), max(i.position)
        FROM interactions i
        JOIN hard h USING (prompt_key)
        LEFT JOIN judged j USING (prompt_key)
        LEFT JOIN derived d USING (prompt_key)
        LEFT JOIN margins m USING (prompt_key)
        WHERE i.position <= %(w)s
        GROUP BY i.prompt_key
        ORDER BY i.prompt_key
        """,
        {"w": watermark, "withdrawn": withdrawn},
    )
    rows = await cur.fetchall()
    latest = [row[4] for row in rows]
    cur = await conn.execute(
        "SELECT interaction_id, messages, tags FROM interactions WHERE interaction_id = ANY(%s)", [latest]
    )
    conversation = {iid: (messages, tags) for iid, messages, tags in await cur.fetchall()}
    candidates, prompts = [], {}
    for key, ids, app, model, newest, consent, down, regens, edits, disputes, margin, decided_by, last in rows:
        messages, tags = conversation[newest]
        prompts[key] = messages
        candidates.append(PromptCandidate(
            prompt_key=key, interaction_ids=tuple(ids), app_id=app, model_version=model, tags=tuple(tags),
            consent=bool(consent), thumbs_down=int(down), regenerations=int(regens), edits=int(edits),
            disagreements=int(disputes),
            prior_reward_margin=None if margin is None else share_of_scale(float(margin), decided_by),
            text=prompt_text(messages), last_position=int(last),
        ))
    return candidates, prompts


def share_of_scale(margin: float, decided_by: str | None) -> float:
    """A selection's margin as a share of its deciding scorer's scale (a 1-10 judge's 7 is 7/9), so the
    sampler reads every margin alike; a reward model's unbounded margin stays as it is."""
    low, high = SCALES.get(decided_by or "", (0.0, 1.0))
    return margin / (high - low)


async def load_sample(conn: psycopg.AsyncConnection, event_id: str | None) -> StoredEvent | None:
    """A recorded sample by id, or the newest one, its cases' conversations opened (an erased user's gone)."""
    where, params = ("AND event_id = %s::uuid", [event_id]) if event_id else ("", [])
    cur = await conn.execute(
        f"SELECT position, event_id::text, type, data FROM events WHERE type = '{HardCasesSampled.TYPE}' {where}"
        " ORDER BY position DESC LIMIT 1",
        params,
    )
    row = await cur.fetchone()
    return None if row is None else (await keys.opened(conn, [StoredEvent(*row)]))[0]


async def interaction_facts(conn: psycopg.AsyncConnection, interaction_ids: Sequence[str]) -> list[InteractionFacts]:
    cur = await conn.execute(
        "SELECT interaction_id, occurred_at, app_id, model_version, prompt_version FROM interactions"
        " WHERE interaction_id = ANY(%s) ORDER BY interaction_id", [list(interaction_ids)])
    return [InteractionFacts(*row) for row in await cur.fetchall()]


class PostgresHardCaseSampling(PostgresLog):
    async def prompt_candidates(self, watermark: int) -> tuple[list[PromptCandidate], dict[str, list[dict[str, Any]]]]:
        return await prompt_candidates(self.conn, watermark)

    async def quarantine(self) -> Quarantine:
        return await load_quarantine(self.conn)

    async def interaction_facts(self, interaction_ids: Sequence[str]) -> list[InteractionFacts]:
        return await interaction_facts(self.conn, interaction_ids)


class PostgresHardCases(PostgresLog):
    """The HardCaseStore port on `conn` (in autocommit: each record is a transaction of its own)."""

    async def signals_checkpoint(self) -> int:
        return await checkpoint(self.conn)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[PostgresHardCaseSampling]:
        async with self.conn.transaction():
            yield PostgresHardCaseSampling(self.conn)

    async def sample(self, sample_id: str | None) -> HardCasesSampled | None:
        found = await load_sample(self.conn, sample_id)
        return None if found is None else HardCasesSampled.of(found.data["payload"])

    async def generated(self, sample_id: str, generator: str, model_version: str,
                        sampling: dict[str, Any]) -> set[str]:
        cur = await self.conn.execute(
            "SELECT prompt_key FROM candidate_groups WHERE sample_id = %s::uuid AND generator = %s"
            " AND model_version = %s AND sampling @> %s::jsonb",
            [sample_id, generator, model_version, orjson.dumps(sampling).decode()])
        return {row[0] for row in await cur.fetchall()}

    async def unselected(self, sample_id: str | None) -> list[dict[str, Any]]:
        return await unselected(self.conn, sample_id)

    async def user_pairs(self, prompt_keys: Sequence[str], limit: int) -> list[dict[str, Any]]:
        return await user_pairs(self.conn, prompt_keys, limit)

    async def probe_audits(self) -> dict[str, dict[str, Any]]:
        return await latest_probe_audits(self.conn)

    async def quarantine(self) -> Quarantine:
        return await load_quarantine(self.conn)
