"""Counts for `flywheel stats`: what is stored, dead-lettered, parked, and how far each consumer is."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import psycopg

from store.tracking import tracked

if TYPE_CHECKING:
    from flywheel.domain.quality import Judgement


def _pairs(conn: psycopg.Connection, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in conn.execute(sql).fetchall()}


def store_stats(conn: psycopg.Connection) -> dict[str, Any]:
    from store.tables import READ_MODELS  # the table definitions: not loaded by a round build or a rollback

    # One scan of the log for both counts: by type, and how many were stored as erased.
    by_type = conn.execute("SELECT type, count(*), count(*) FILTER (WHERE data ? 'erased') FROM events"
                           " GROUP BY 1 ORDER BY 1").fetchall()
    events = {str(t): int(n) for t, n, _ in by_type}
    dead = _pairs(conn, "SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1")
    parked = conn.execute("SELECT count(*) FROM parked").fetchone()
    head = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
    projected = conn.execute("SELECT position FROM checkpoints WHERE name = 'signals'").fetchone()
    read_models = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in READ_MODELS}  # type: ignore[index]
    tracking = tracked(conn)
    rights = conn.execute("SELECT count(*) FILTER (WHERE erased), count(*) FILTER (WHERE withdrawn AND NOT erased)"
                          " FROM erasures").fetchone()
    return {
        "events": {"total": sum(events.values()), "by_type": events, "head_position": int(head[0]) if head else 0},
        "dead_lettered": {"total": sum(dead.values()), "by_reason": dead},
        "parked": int(parked[0]) if parked else 0,
        "read_models": read_models,
        # log positions the signals projector has still to apply (it runs a moment behind ingest)
        "signals_behind": (int(head[0]) if head else 0) - (int(projected[0]) if projected else 0),
        "consumers": tracking,
        # erasure and consent events are in events.by_type; these are the users they leave out now
        "privacy": {"erased_users": int(rights[0]) if rights else 0,
                    "withdrawn_users": int(rights[1]) if rights else 0,
                    "events_stored_as_erased": sum(int(n) for *_, n in by_type)},
    }


def ingest_summary(conn: psycopg.Connection) -> dict[str, int]:
    """What `flywheel up` reports every few seconds: app events stored (those that carry a user), messages
    dead-lettered, and feedback parked until its interaction arrives."""
    row = conn.execute("SELECT (SELECT count(*) FROM events WHERE data ? 'user'), (SELECT count(*) FROM dead_letters),"
                       " (SELECT count(*) FROM parked)").fetchone()
    assert row is not None
    return {"stored": int(row[0]), "dead_lettered": int(row[1]), "parked": int(row[2])}


async def signal_report(conn: psycopg.AsyncConnection, *, upto: int | None = None,
                        feedback_conn: psycopg.AsyncConnection | None = None) -> dict[str, Any]:
    """`flywheel signals` (and a round's report, as of its watermark `upto`): counts by rule, feedback rates
    and inter-rater agreement per app and model version, bias audits, and the scorers' audits (agreement of
    users, judge and reward model on pairs; bias-probe accuracy: store.audits.scorer_audit_report).

    With `feedback_conn` (a second connection that sees what `conn` sees), the feedback's figures are queried on it
    while the signals' are on `conn`: two backends, twice as fast on an idle machine."""
    upto = 2**62 if upto is None else upto
    if feedback_conn is None:
        signals, feedback = await _signals_figures(conn, upto), await _feedback_figures(conn, upto)
    else:
        signals, feedback = await asyncio.gather(_signals_figures(conn, upto), _feedback_figures(feedback_conn, upto))
    from store.audits import scorer_audit_report

    return {
        "signals": signals["signals"],
        "feedback_rates": feedback["feedback_rates"],
        "agreement": feedback["agreement"],
        "length_bias": signals["length_bias"],
        "position_bias": feedback["position_bias"],
        **await scorer_audit_report(conn, upto),  # scorer_agreement, bias_probes, flagged_scorers
    }


async def _rows(conn: psycopg.AsyncConnection, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, params)
    return await cur.fetchall()


async def _signals_figures(conn: psycopg.AsyncConnection, upto: int) -> dict[str, Any]:
    from flywheel.domain.quality import length_bias_from_sums

    counts = [
        {"kind": k, "rule": r, "status": s, "count": n, "disagreement": d, "no_consent": c}
        for k, r, s, n, d, c in await _rows(
            conn,
            "SELECT kind, rule, status, count(*), count(*) FILTER (WHERE disagreement),"
            " count(*) FILTER (WHERE NOT consent) FROM signals WHERE position <= %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            [upto])
    ]
    # Bias audits as aggregates: a report's memory must not grow with the log (flywheel.domain.quality has the rules).
    [(decided, longer, equal, sum_dm, sum_dd, sum_mm)] = await _rows(
        conn,
        "SELECT count(*) FILTER (WHERE NOT tie), count(*) FILTER (WHERE NOT tie AND chosen > rejected),"
        " count(*) FILTER (WHERE NOT tie AND chosen = rejected), coalesce(sum(d * m), 0), coalesce(sum(d * d), 0),"
        " coalesce(sum(m * m), 0) FROM (SELECT chosen, rejected, tie, (chosen - rejected)::float8 AS d,"
        " CASE WHEN tie THEN 0 ELSE margin END AS m FROM (SELECT chosen_length AS chosen,"
        " rejected_length AS rejected, margin, tie FROM signals WHERE kind = 'pair' AND position <= %s) p) q",
        [upto])
    return {"signals": counts,
            "length_bias": asdict(length_bias_from_sums(decided=decided, longer=longer, equal=equal, sum_dm=sum_dm,
                                                        sum_dd=sum_dd, sum_mm=sum_mm))}


async def multi_rated_judgements(conn: psycopg.AsyncConnection, upto: int) -> dict[str, tuple[Judgement, ...]]:
    """Thumbs and ratings (by kind) of the interactions that two or more users judged, as of `upto`."""
    from flywheel.domain.quality import judgements_from
    from flywheel.domain.signals import InteractionRecord

    # Agreement needs items judged by several users: load just those.
    ids = [r[0] for r in await _rows(
        conn,
        "SELECT interaction_id FROM feedback WHERE type IN ('thumbs', 'rating') AND position <= %s"
        " GROUP BY interaction_id HAVING count(DISTINCT user_id_hash) > 1", [upto])]
    interactions = [
        InteractionRecord(interaction_id=i, event_id=e, position=p, app_id=a, model_version=m, prompt_version=v,
                          user_id_hash=u, consent_training=c, occurred_at=t, messages=(), response="", tags=())
        for i, e, p, a, m, v, u, c, t in await _rows(
            conn,
            "SELECT interaction_id, event_id::text, position, app_id, model_version, prompt_version, user_id_hash,"
            " consent_training, occurred_at FROM interactions WHERE interaction_id = ANY(%s)", [ids])
    ]
    feedback = await _feedback(conn, "interaction_id = ANY(%s) AND type IN ('thumbs', 'rating') AND position <= %s",
                               [ids, upto])
    return {kind: judgements_from(interactions, feedback, kind=kind) for kind in ("thumbs", "rating")}


async def _feedback_figures(conn: psycopg.AsyncConnection, upto: int) -> dict[str, Any]:
    from flywheel.domain.quality import agreement_by, position_bias_of

    feedback_rates = await _feedback_rates(conn, upto)
    by_kind = await multi_rated_judgements(conn, upto)
    agreement: dict[str, Any] = {}
    for kind in ("thumbs", "rating"):
        judgements = by_kind[kind]
        agreement[kind] = {
            key: {k: asdict(v) for k, v in agreement_by(judgements, key).items()}
            for key in ("app_id", "model_version")
        } if judgements else {}
    [(compared, ties, first_wins)] = await _rows(
        conn,
        "SELECT count(*) FILTER (WHERE payload->>'strength' <> 'tie'), count(*) FILTER (WHERE payload->>'strength'"
        " = 'tie'), count(*) FILTER (WHERE payload->>'strength' <> 'tie' AND payload->'presented_order'->>0"
        " = payload->>'chosen_interaction_id') FROM feedback WHERE type = 'comparison' AND position <= %s", [upto])
    return {"feedback_rates": feedback_rates, "agreement": agreement,
            "position_bias": asdict(position_bias_of(compared, ties, first_wins))}


# feedback kind → which feedback rows count (per 100 responses of a model version)
_RATE_KINDS = {
    "thumbs_up": "f.type = 'thumbs' AND f.payload ->> 'value' = 'up'",
    "thumbs_down": "f.type = 'thumbs' AND f.payload ->> 'value' = 'down'",
    "edits": "f.type = 'edit'",
    "regenerations": "f.type = 'regenerate'",
    "ratings": "f.type = 'rating'",
    "comparisons": "f.type = 'comparison'",
}


def _rates(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, float | int]]:
    """Per 100 responses of each model version: the feedback each kind of event gave them."""
    return {version: {"interactions": n, **{kind: round(100 * k / n, 2)
                                            for kind, k in zip(_RATE_KINDS, ks, strict=True)}}
            for version, n, *ks in rows}


# From the feedback log: a comparison is feedback on both responses, as the interactions' own counters have it.
_RATES_FROM_FEEDBACK = (
    "SELECT i.model_version, count(*)," + ", ".join(f" coalesce(sum(f.{k}), 0)::bigint" for k in _RATE_KINDS)
    + " FROM interactions i LEFT JOIN (SELECT about AS interaction_id,"
    + ", ".join(f" count(*) FILTER (WHERE {cond}) AS {k}" for k, cond in _RATE_KINDS.items())
    + " FROM feedback f, unnest(CASE WHEN f.type = 'comparison'"
    " THEN ARRAY[f.payload ->> 'chosen_interaction_id', f.payload ->> 'rejected_interaction_id']"
    " ELSE ARRAY[f.interaction_id] END) AS about"
    " WHERE f.position <= %(w)s GROUP BY 1) f USING (interaction_id)"
    " WHERE i.position <= %(w)s GROUP BY 1 ORDER BY 1"
)
# From the interactions' counters (store.projections), which count every feedback event up to last_position.
_RATES_FROM_COUNTERS = (
    "SELECT model_version, count(*)," + ", ".join(f" sum({k})::bigint" for k in _RATE_KINDS)
    + ", bool_or(last_position > %(w)s) FROM interactions WHERE position <= %(w)s GROUP BY 1 ORDER BY 1"
)


async def _feedback_rates(conn: psycopg.AsyncConnection, upto: int) -> dict[str, dict[str, float | int]]:
    """Feedback rates as of `upto`: from the counters when no interaction has feedback after it (a round cut at
    the head of the log: one scan of interactions, a seventh of the join's time at 300k events), else from the
    feedback log."""
    cur = await conn.execute(_RATES_FROM_COUNTERS, {"w": upto})
    counted = await cur.fetchall()
    if not any(row[-1] for row in counted):
        return _rates([row[:-1] for row in counted])
    cur = await conn.execute(_RATES_FROM_FEEDBACK, {"w": upto})
    return _rates(await cur.fetchall())


async def _feedback(conn: psycopg.AsyncConnection, where: str, params: list[Any]) -> list[Any]:
    from flywheel.domain.signals import FeedbackRecord

    cur = await conn.execute(
        "SELECT event_id::text, position, type, interaction_id, user_id_hash, consent_training, occurred_at,"
        f" payload FROM feedback WHERE {where}", params)
    return [
        FeedbackRecord(event_id=e, position=p, type=t, interaction_id=i, user_id_hash=u, consent_training=c,
                       occurred_at=at, payload=payload)
        for e, p, t, i, u, c, at, payload in await cur.fetchall()
    ]
