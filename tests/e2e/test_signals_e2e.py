"""From `flywheel simulate` through a real worker to preference data in Postgres and `flywheel signals`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from flywheel.settings import Settings
from store.db import connect_sync
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def test_simulated_traffic_becomes_pairs_labels_and_agreement_figures(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[[], subprocess.Popen[bytes]],
) -> None:
    start_worker()
    summary = json.loads(run_cli("simulate", "--events", "4000", "--seed", "21", "--bad-fraction", "0",
                                 "--panel-fraction", "0.2", "--json").stdout)

    def stored() -> bool:
        with connect_sync(settings.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        return row == (summary["valid"]["total"],)

    wait_until(stored, timeout=180, what="every simulated event stored")

    report = json.loads(run_cli("signals", "--json").stdout)
    rules = {c["rule"] for c in report["signals"]}
    assert {"edit_pair", "comparison_pair", "thumbs_label"} <= rules, rules
    by_kind: dict[str, int] = {}
    for c in report["signals"]:
        by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + c["count"]
    assert by_kind["pair"] > 0 and by_kind["kto"] > 0 and by_kind["sft"] > 0 and by_kind["hard_case"] > 0

    thumbs = report["agreement"]["thumbs"]["app_id"]
    assert thumbs, "panels judged the same interactions: agreement must be computable per app"
    measured = [a for a in thumbs.values() if a["krippendorff_alpha"]]
    assert measured and all(-1 <= a["krippendorff_alpha"]["value"] <= 1 for a in measured)
    assert all(a["krippendorff_alpha"]["band"] in {"poor", "fair", "moderate", "strong"} for a in measured)
    assert report["position_bias"]["comparisons"] > 0
    assert 0 <= report["position_bias"]["first_shown_win_rate"] <= 1
    assert report["length_bias"]["pairs"] > 0

    human = run_cli("signals").stdout
    assert "length bias" in human and "position bias" in human and "edit_pair" in human

    with connect_sync(settings.database_url) as conn:
        lineage = conn.execute(
            "SELECT data FROM signals WHERE kind = 'pair' AND rule = 'edit_pair' LIMIT 1").fetchone()
    assert lineage is not None
    pair = lineage[0]
    for field in ("source_event_ids", "app_id", "model_version", "prompt_version", "rule_version", "confidence",
                  "preference_reason", "tags", "prompt", "chosen", "rejected", "margin"):
        assert field in pair, field
    assert run_cli("replay", "--check").returncode == 0
