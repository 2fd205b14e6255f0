"""A round's report.html shows the feedback behind it as of its watermark: rates per model version, rater
agreement, length and position bias (real Postgres)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flywheel.bootstrap import round_ops
from flywheel.domain.commands import BuildRound
from flywheel.domain.quality import length_bias, position_bias
from flywheel.domain.signals import FeedbackRecord
from flywheel.settings import Endpoints
from flywheel.simulator import generate
from store.db import connect_sync
from store.stats import _RATES_FROM_FEEDBACK, _rates, signal_report
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store

pytestmark = pytest.mark.integration


def test_the_report_shows_the_feedback_as_of_the_round_watermark(endpoints: Endpoints, tmp_path: Path) -> None:
    url = endpoints.database_url
    values = [m.value for m in generate(3000, seed=5, panel_fraction=0.2) if m.expected_reason is None]
    ingest_all(url, values[:2000], [500])
    built = in_store(url, lambda conn: round_ops(conn, tmp_path / "rounds").build(BuildRound()))
    audits: dict[str, Any] = in_store(url, lambda conn: signal_report(conn, upto=built.watermark))

    with connect_sync(url) as conn:  # the interactions' own counters (the watermark is the head here)
        counters = conn.execute(
            "SELECT model_version, count(*), sum(thumbs_up), sum(thumbs_down), sum(edits), sum(regenerations),"
            " sum(ratings), sum(comparisons) FROM interactions GROUP BY 1").fetchall()
    rates = audits["feedback_rates"]
    assert set(rates) == {c[0] for c in counters} and len(rates) > 1
    for version, n, *sums in counters:
        assert rates[version] == {"interactions": n, **{
            kind: round(100 * int(k) / n, 2) for kind, k in zip(
                ("thumbs_up", "thumbs_down", "edits", "regenerations", "ratings", "comparisons"), sums, strict=True)}}
    with connect_sync(url) as conn:  # what the counters say is what the feedback log says
        assert _rates(conn.execute(_RATES_FROM_FEEDBACK, {"w": built.watermark}).fetchall()) == rates
    # panels judged the same interactions: agreement per app and per model version
    assert audits["agreement"]["thumbs"]["app_id"] and audits["agreement"]["thumbs"]["model_version"]

    # the bias aggregates the query computes are the rules of flywheel.domain.quality over every pair and comparison
    with connect_sync(url) as conn:
        pairs = [SimpleNamespace(chosen=c, rejected=r, margin=m, tie=t) for c, r, m, t in conn.execute(
            "SELECT data->>'chosen', data->>'rejected', (data->>'margin')::float8, (data->>'tie')::bool FROM signals"
            " WHERE kind = 'pair' AND position <= %s", [built.watermark]).fetchall()]
        comparisons = [FeedbackRecord(event_id=e, position=p, type="comparison", interaction_id=i, user_id_hash=u,
                                      consent_training=c, occurred_at=at, payload=payload)
                       for e, p, i, u, c, at, payload in conn.execute(
            "SELECT event_id::text, position, interaction_id, user_id_hash, consent_training, occurred_at, payload"
            " FROM feedback WHERE type = 'comparison' AND position <= %s", [built.watermark]).fetchall()]
    rule = asdict(length_bias(pairs))
    assert rule["pairs"] > 0 and audits["length_bias"] == {**rule, "correlation": pytest.approx(rule["correlation"])}
    assert comparisons and audits["position_bias"] == asdict(position_bias(comparisons))

    html = (built.path / "report.html").read_text()
    assert "Feedback per 100 responses, by model version" in html and "Rater agreement" in html
    assert all(f"{version} thumbs down" in html for version in rates)
    assert "Krippendorff" in html and "longer response chosen" in html
    assert "signals read model at its checkpoint" not in html  # cut at the checkpoint: the counts are exact

    # Later traffic changes the live figures, not those of the round's watermark.
    ingest_all(url, values[2000:], [500], first_offset=2000)
    assert in_store(url, lambda conn: signal_report(conn))["feedback_rates"] != rates
    # (the log-based figures: signal counts come from the read model, which later events may re-derive)
    again = in_store(url, lambda conn: signal_report(conn, upto=built.watermark))
    assert {k: again[k] for k in ("feedback_rates", "agreement", "position_bias")} == {
        k: audits[k] for k in ("feedback_rates", "agreement", "position_bias")}
