"""Audits of the scorers in the store: the probe read model, the users' pairs to score, agreement as of a watermark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import BiasProbesScored, UserPairsScored
from flywheel.domain.log import StoredEvent

AUDIT_EVENT_TYPES = frozenset({BiasProbesScored.TYPE, UserPairsScored.TYPE})
NEXT_ROUND = "next"  # the round label of judgements no published round covers yet


async def project_audits(cur: psycopg.AsyncCursor[Any], events: Sequence[StoredEvent]) -> None:
    """Apply UserPairsScored and BiasProbesScored events (in position order) to scorer_audits; in scorer_probes
    each scorer's latest probe audit replaces its last."""
    for e in events:
        audit = e.data["payload"].get("audit") if e.type == BiasProbesScored.TYPE else None
        await cur.execute("INSERT INTO scorer_audits (position, type, scorer, payload) VALUES (%s, %s, %s, %s)",
                          (e.position, e.type, None if audit is None else audit["scorer"],
                           orjson.dumps(e.data["payload"]).decode()))
        if audit is None:
            continue
        await cur.execute(
            "INSERT INTO scorer_probes (scorer, position, run_id, version, probe_set, accuracy, drift, min_accuracy,"
            " flagged, audit) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (scorer) DO UPDATE SET"
            " position = excluded.position, run_id = excluded.run_id, version = excluded.version,"
            " probe_set = excluded.probe_set, accuracy = excluded.accuracy, drift = excluded.drift,"
            " min_accuracy = excluded.min_accuracy, flagged = excluded.flagged, audit = excluded.audit",
            (audit["scorer"], e.position, e.data["payload"]["run_id"], audit["version"], audit["probe_set"],
             audit["accuracy"], audit["drift"], audit["min_accuracy"], audit["flagged"],
             orjson.dumps(audit).decode()))


async def latest_probe_audits(conn: psycopg.AsyncConnection) -> dict[str, dict[str, Any]]:
    """Each scorer's latest probe audit (sampling.probes.ProbeAudit as a dict), by scorer name."""
    cur = await conn.execute("SELECT scorer, audit FROM scorer_probes ORDER BY scorer")
    return {scorer: audit for scorer, audit in await cur.fetchall()}


async def flagged_scorers(conn: psycopg.AsyncConnection) -> list[str]:
    """Scorers whose latest probe accuracy is below its minimum: what a promotion gate reads."""
    cur = await conn.execute("SELECT scorer FROM scorer_probes WHERE flagged ORDER BY scorer")
    return [row[0] for row in await cur.fetchall()]


async def user_pairs(conn: psycopg.AsyncConnection, prompt_keys: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """The users' decided preference pairs (A/B choices, edits, rating gaps, regenerations) about these prompts,
    consented ones only, at most `limit`, in (prompt_key, signal_id) order: pair_id, prompt_key, prompt, chosen,
    rejected, tie, rule, app_id, model_version."""
    cur = await conn.execute(
        "SELECT signal_id, prompt_key, data FROM signals WHERE kind = 'pair' AND prompt_key = ANY(%s)"
        " AND consent AND status IS DISTINCT FROM 'pending' ORDER BY prompt_key, signal_id LIMIT %s",
        [list(prompt_keys), limit])
    return [{"pair_id": sid, "prompt_key": key, "prompt": d["prompt"], "chosen": d["chosen"],
             "rejected": d["rejected"], "tie": bool(d.get("tie")), "rule": d["rule"], "app_id": d.get("app_id") or "",
             "model_version": d.get("model_version") or ""}
            for sid, key, d in await cur.fetchall()]


async def scorer_audit_report(conn: psycopg.AsyncConnection, upto: int) -> dict[str, Any]:
    """Agreement of users, judge and reward model on the scored pairs, per round (the first published round whose
    watermark covers the scoring, NEXT_ROUND if none yet), app and model version; and each scorer's latest probe
    audit, all as the log stood at `upto`."""
    from flywheel.domain.pairwise import judgements_of, pairwise_agreement_by

    cur = await conn.execute(
        "SELECT position, payload FROM scorer_audits WHERE type = %s AND position <= %s ORDER BY position",
        [UserPairsScored.TYPE, upto])
    scored = await cur.fetchall()
    cur = await conn.execute("SELECT number, watermark FROM rounds WHERE position <= %s ORDER BY number", [upto])
    rounds = await cur.fetchall()

    def round_of(position: int) -> str:
        return next((str(n) for n, w in rounds if w >= position), NEXT_ROUND)

    judgements = [j for position, payload in scored
                  for j in judgements_of(UserPairsScored.of(payload), round_of(position))]
    agreement = {key: {k: asdict(v) for k, v in pairwise_agreement_by(judgements, key).items()}
                 for key in ("round", "app_id", "model_version")} if judgements else {}
    cur = await conn.execute(
        "SELECT DISTINCT ON (scorer) payload -> 'audit' FROM scorer_audits WHERE type = %s"
        " AND position <= %s ORDER BY scorer, position DESC", [BiasProbesScored.TYPE, upto])
    probes = [row[0] for row in await cur.fetchall()]
    return {"scorer_agreement": agreement, "bias_probes": probes,
            "flagged_scorers": [p["scorer"] for p in probes if p["flagged"]]}
