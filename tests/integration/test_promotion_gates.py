"""Promotion gates on the real stack, through `flywheel rounds build`: each gate passes, fails and has not
enough data; a held round keeps its files, leaves `current` alone and becomes current only by `rounds promote`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.settings import Settings
from flywheel.simulator import generate
from tests.integration.test_signals_store import ingest_all

pytestmark = pytest.mark.integration

# Every gate passes whatever the traffic: limits no figure can break, and enough data everywhere.
PASSING = PromotionConfig(agreement_limit=-1.0, agreement_min_items=2, min_bias_pairs=1, min_bias_comparisons=1,
                          max_chosen_longer_share=1.0, max_length_correlation=1.0, max_first_shown_win_rate=1.0,
                          min_position_p_value=0.0, max_contamination_rate=1.0, max_drift=1e9, min_drift_rows=1)
# No gate but agreement can be passed by real traffic: limits at the edge of each figure's range. (Agreement
# failing everywhere would leave no human-feedback row, and so nothing for the other gates to measure.)
FAILING = PromotionConfig(agreement_min_items=10**9, min_bias_pairs=1, min_bias_comparisons=1,
                          max_chosen_longer_share=0.0, max_length_correlation=0.0, max_first_shown_win_rate=0.5,
                          min_position_p_value=1.0, max_contamination_rate=0.0, max_drift=0.0, min_drift_rows=1,
                          min_sft_rows=10**9, min_dpo_rows=10**9, min_kto_rows=10**9)
# Raters must agree perfectly: every slice fails, and its human-feedback rows are left out.
DISAGREEING = PromotionConfig(**{**PASSING.__dict__, "agreement_limit": 1.0})
# Every gate that measures a sample asks for more than there is.
TOO_FEW = PromotionConfig(**{**PASSING.__dict__, "agreement_min_items": 10**9, "min_bias_pairs": 10**9,
                             "min_bias_comparisons": 10**9, "min_drift_rows": 10**9})


def cli(settings: Settings, *args: str, promotion: PromotionConfig | None = None, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    chosen = settings if promotion is None else settings.model_copy(update={"promotion": promotion})
    done = subprocess.run([sys.executable, "-m", "flywheel", *args], env=chosen.child_env(), capture_output=True,
                          text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"flywheel {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def build(settings: Settings, promotion: PromotionConfig, by: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cli(settings, "rounds", "build", "--json", "--by", by,
                                         promotion=promotion).stdout)
    return out


def gates(built: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in built["promotion"]}


def families(built: dict[str, Any], status: str) -> set[str]:
    """The gate families (agreement, min_rows, length_bias, ...) with at least one gate of this status."""
    return {g["name"].split(":")[0] for g in built["promotion"] if g["status"] == status}


def current(settings: Settings) -> str:
    done = cli(settings, "rounds", "current", check=False)
    return Path(done.stdout.strip()).name if done.returncode == 0 else "none"


def test_each_gate_passes_fails_or_has_not_enough_data_and_a_held_round_waits_for_promote(
        settings: Settings, tmp_path: Path) -> None:
    url = settings.database_url
    values = [m.value for m in generate(3000, seed=11, panel_fraction=0.3) if m.expected_reason is None]
    ingest_all(url, values[:1800], [500])

    first = build(settings, PASSING, "alice")
    assert first["state"] == "promoted" and current(settings) == "round-0001"
    assert all(set(g) >= {"name", "value", "limit", "blocking", "passed"} for g in first["promotion"])
    assert families(first, "fail") == set()
    assert families(first, "pass") == {"agreement", "min_rows", "length_bias", "position_bias", "contamination"}
    # no parent round yet; no generated row a scorer selected
    assert families(first, "not enough data") == {"drift", "scorer_audit"}

    # Quarantine a text the round trained on, so the contamination gate has hits to count; more traffic, so the
    # next round drifts from its parent.
    row = json.loads((Path(first["path"]) / "train" / "sft.jsonl").read_text().splitlines()[0])
    prompt = next(m["content"] for m in row["messages"] if m["role"] == "user")
    answer = row["messages"][-1]["content"]
    items = tmp_path / "eval.jsonl"
    items.write_text(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
    cli(settings, "quarantine", "add", str(items), "--name", "bench", "--by", "dana")
    ingest_all(url, values[1800:], [500], first_offset=1800)

    held = build(settings, FAILING, "bob")
    assert held["state"] == "held"
    assert families(held, "pass") == set()
    assert families(held, "fail") == {"min_rows", "length_bias", "position_bias", "contamination", "drift"}
    assert current(settings) == "round-0001"  # held: current unchanged
    manifest = json.loads((Path(held["path"]) / "manifest.json").read_text())  # files kept for forensics
    assert manifest["promotion"]["state"] == "held"
    assert [g["name"] for g in manifest["promotion"]["gates"]] == [g["name"] for g in held["promotion"]]
    thin_slices = [g for g in manifest["promotion"]["gates"] if g["status"] == "not enough data"]
    # too few items for agreement (asked for 10**9); drift only where neither round has a row of that kind
    assert {g["name"].split(":")[0] for g in thin_slices} == {"agreement", "drift", "scorer_audit"}
    assert all(g["detail"]["rows"] == g["detail"]["parent_rows"] == 0 for g in thin_slices
               if g["name"].startswith("drift:"))
    report = (Path(held["path"]) / "report.html").read_text()
    assert "Promotion: held" in report and "min_rows:sft" in report

    listed = cli(settings, "rounds", "list").stdout
    assert "round    2  HELD" in listed and "built (held) by bob" in listed and "built (promoted) by alice" in listed
    shown = cli(settings, "rounds", "show", "2").stdout
    assert "promotion gates" in shown and "min_rows:sft" in shown and "fail" in shown

    # A rollback never moves current to the held round; only promote does, as an audited event.
    cli(settings, "rounds", "rollback", "1", "--reason", "bad labels", "--by", "carol")
    assert current(settings) == "none"
    promoted = cli(settings, "rounds", "promote", "2", "--reason", "limits were a drill", "--by", "erin").stdout
    assert "round 2 promoted" in promoted and current(settings) == "round-0002"
    show = json.loads(cli(settings, "rounds", "show", "2", "--json").stdout)
    assert show["state"] == "promoted"
    assert [(h["what"], h["by"]) for h in show["history"]] == [("built (held)", "bob"), ("promoted", "erin")]
    rolled = json.loads(cli(settings, "rounds", "show", "1", "--json").stdout)
    assert (rolled["history"][-1]["what"], rolled["history"][-1]["by"]) == ("rolled back", "carol")

    thin = build(settings, TOO_FEW, "frank")
    assert thin["state"] == "promoted" and current(settings) == "round-0003"
    assert families(thin, "not enough data") == {"agreement", "length_bias", "position_bias", "drift",
                                                 "scorer_audit"}
    assert families(thin, "fail") == set()
    assert all(g["passed"] for g in thin["promotion"] if g["status"] == "not enough data")

    disagreeing = build(settings, DISAGREEING, "gina")
    failing = [g for g in disagreeing["promotion"] if g["name"].startswith("agreement:")]
    assert failing and all(g["status"] == "fail" and not g["blocking"] for g in failing)
    assert disagreeing["state"] == "promoted"  # agreement leaves the rows out; it does not hold the round
    manifest = json.loads((Path(disagreeing["path"]) / "manifest.json").read_text())
    assert manifest["promotion"]["left_out_for_agreement"] > 0
    by_slice = {(g["detail"]["app_id"], g["detail"]["model_version"]): g["detail"]["rows_left_out"]
                for g in manifest["promotion"]["gates"] if g["name"].startswith("agreement:")}  # thumbs and ratings
    assert sum(by_slice.values()) == manifest["promotion"]["left_out_for_agreement"]
    assert manifest["data_sources"]["rows_by_kind"]["sft"] == 0  # every slice failed: no human-feedback row

    diff = json.loads(cli(settings, "rounds", "diff", "2", "3", "--json").stdout)
    assert diff["state"] == ["promoted", "promoted"]
    assert diff["promotion"]["min_rows:sft"][0]["passed"] is False and diff["promotion"]["min_rows:sft"][1]["passed"]
    assert any(k.startswith(("by_app.", "by_model_version.", "sources.")) for k in diff["changes"])
