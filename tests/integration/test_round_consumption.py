"""`flywheel rounds consume`: who trained what, in the log, consumption.json and `rounds show`, while the published
manifest.json stays byte for byte as it was (real Postgres and broker)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from flywheel.settings import Settings
from flywheel.simulator import generate
from streams.topics import ensure_topics
from tests.integration.test_hardcase_loop import query
from tests.integration.test_signals_store import ingest_all

pytestmark = pytest.mark.integration


def test_consume_records_run_model_version_and_stage_and_never_rewrites_the_manifest(
        settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    ensure_topics(settings.kafka_bootstrap, settings)
    ingest_all(settings.database_url, [m.value for m in generate(800, seed=5) if m.expected_reason is None], [400])
    built = json.loads(run_cli("rounds", "build", "--json").stdout)
    manifest = Path(built["path"]) / "manifest.json"
    published = hashlib.sha256(manifest.read_bytes()).hexdigest()

    said = run_cli("rounds", "consume", "1", "--run", "run-7", "--model-version", "m-2026-12", "--stage", "dpo",
                   "--by", "trainer-bot").stdout
    assert "run run-7 (model m-2026-12, stage dpo) recorded" in said
    run_cli("rounds", "consume", "1", "--run", "run-8", "--model-version", "m-2026-12b", "--stage", "sft")
    again = run_cli("rounds", "consume", "1", "--run", "run-7", "--model-version", "m-other", "--stage", "kto")
    assert "already recorded" in again.stdout  # one record per run: the first one stands
    missing = run_cli("rounds", "consume", "1", "--run", "run-9", "--model-version", "m", check=False)
    assert missing.returncode == 2 and "--stage" in missing.stderr
    blank = run_cli("rounds", "consume", "1", "--run", "run-9", "--model-version", " ", "--stage", "dpo", check=False)
    assert blank.returncode == 2 and "must not be empty" in blank.stderr

    [(payload,)] = query(settings.database_url, "SELECT data -> 'payload' FROM events WHERE type = 'round_consumed'"
                                                " AND data -> 'payload' ->> 'run_id' = 'run-7'")
    assert payload == {"round": 1, "run_id": "run-7", "by": "trainer-bot", "model_version": "m-2026-12",
                       "stage": "dpo"}
    written = json.loads((Path(built["path"]) / "consumption.json").read_text())
    assert written["runs"] == ["run-7", "run-8"]
    assert [(c["run_id"], c["model_version"], c["stage"]) for c in written["consumptions"]] == [
        ("run-7", "m-2026-12", "dpo"), ("run-8", "m-2026-12b", "sft")]
    assert written["consumptions"][0]["by"] == "trainer-bot" and written["consumptions"][1]["by"]  # or the OS user
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == published  # never rewritten after publication
    assert json.loads(manifest.read_text())["training_consumption"] == []

    shown = json.loads(run_cli("rounds", "show", "1", "--json").stdout)
    merged = shown["manifest"]["training_consumption"]
    assert [(c["run_id"], c["model_version"], c["stage"]) for c in merged] == [
        ("run-7", "m-2026-12", "dpo"), ("run-8", "m-2026-12b", "sft")]
    human = run_cli("rounds", "show", "1").stdout
    assert "consumed by run run-7: model m-2026-12, stage dpo" in human
    assert "consumed by run run-7 (model m-2026-12, stage dpo) by trainer-bot" in human



def test_a_rounds_table_from_before_consumptions_keeps_its_runs(settings: Settings,
                                                                run_cli: Callable[..., subprocess.CompletedProcess[str]]
                                                                ) -> None:
    from store.db import connect_sync, create_schema

    ensure_topics(settings.kafka_bootstrap, settings)
    ingest_all(settings.database_url, [m.value for m in generate(300, seed=5) if m.expected_reason is None], [300])
    run_cli("rounds", "build")
    with connect_sync(settings.database_url) as conn:
        conn.execute("ALTER TABLE rounds DROP COLUMN consumptions")
        conn.execute("UPDATE rounds SET consumed_by = ARRAY['old-run']")
        conn.commit()
    create_schema(settings.database_url)
    assert query(settings.database_url, "SELECT consumptions FROM rounds") == [([{"run_id": "old-run"}],)]
    shown = json.loads(run_cli("rounds", "show", "1", "--json").stdout)
    assert shown["manifest"]["training_consumption"] == [{"run_id": "old-run"}]
    assert "consumed by run old-run: model not said, stage not said" in run_cli("rounds", "show", "1").stdout
