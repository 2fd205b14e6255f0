"""A round's report.html shows the feedback behind it as of its watermark: rates per model version, rater
agreement, length and position bias (real Postgres)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flywheel.endpoints import Endpoints
from flywheel.roundbuild import build_round
from flywheel.rounds import RoundConfig
from flywheel.simulate import generate
from store.db import connect_sync
from store.stats import signal_report
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store

pytestmark = pytest.mark.integration


def test_the_report_shows_the_feedback_as_of_the_round_watermark(endpoints: Endpoints, tmp_path: Path) -> None:
    url = endpoints.database_url
    values = [m.value for m in generate(3000, seed=5, panel_fraction=0.2) if m.expected_reason is None]
    ingest_all(url, values[:2000], [500])
    built = in_store(url, lambda conn: build_round(conn, tmp_path / "rounds", RoundConfig()))
    audits: dict[str, Any] = in_store(url, lambda conn: signal_report(conn, upto=built.watermark))

    with connect_sync(url) as conn:
        expected = {version: (n, down) for version, n, down in conn.execute(
            "SELECT i.model_version, count(DISTINCT i.interaction_id), count(f.position) FILTER"
            " (WHERE f.type = 'thumbs' AND f.payload ->> 'value' = 'down') FROM interactions i"
            " LEFT JOIN feedback f ON f.interaction_id = i.interaction_id GROUP BY 1").fetchall()}
    rates = audits["feedback_rates"]
    assert set(rates) == set(expected) and len(rates) > 1
    for version, (n, down) in expected.items():
        assert rates[version]["interactions"] == n and rates[version]["thumbs_down"] == round(100 * down / n, 2)
    # panels judged the same interactions: agreement per app and per model version
    assert audits["agreement"]["thumbs"]["app_id"] and audits["agreement"]["thumbs"]["model_version"]

    html = (built.path / "report.html").read_text()
    assert "Feedback per 100 responses, by model version" in html and "Rater agreement" in html
    assert all(f"{version} thumbs down" in html for version in rates)
    assert "Krippendorff" in html and "longer response chosen" in html

    # Later traffic changes the live figures, not those of the round's watermark.
    ingest_all(url, values[2000:], [500], first_offset=2000)
    assert in_store(url, lambda conn: signal_report(conn))["feedback_rates"] != rates
    assert in_store(url, lambda conn: signal_report(conn, upto=built.watermark)) == audits
