"""Every `flywheel` command that prints gives a JSON document with --json, on a real store and broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flywheel.settings import Settings
from flywheel.simulator import generate
from streams.topics import ensure_topics
from tests.conftest import settings_env
from tests.integration.test_nightly import candidate_groups
from tests.integration.test_signals_store import ingest_all

pytestmark = pytest.mark.integration


def test_every_printing_command_speaks_json(
    settings: Settings, tmp_path: Path,
) -> None:
    settings = settings.model_copy(update={"generation_topic": f"gen-{settings.consumer_group}"})
    ensure_topics(settings.kafka_bootstrap, settings)
    ingest_all(settings.database_url, [m.value for m in generate(1200, seed=12) if m.expected_reason is None], [400])

    def cli(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "flywheel", *args, "--json"], env=settings_env(settings),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    stats = cli("stats")
    assert stats["events"]["total"] > 0 and stats["dead_lettered"]["total"] == 0
    assert {"kto", "hard_case"} <= {c["kind"] for c in cli("signals")["signals"]}
    assert cli("replay")["rebuilt_from_events"] == stats["events"]["total"]
    assert cli("replay", "--check")["drift"] is False

    sampled = cli("sample", "--budget", "3")
    assert sampled["chosen"] == 3 and len(sampled["cases"]) == 3
    sent = cli("generate", "--via-kafka")
    assert sent == {"sample_id": sampled["sample_id"], "requests": 3}
    candidate_groups(settings, [['{"a": 1}', "not json"]] * 2)
    selected = cli("select", "--verify-json", "--min-margin", "0.5", "--sft-threshold", "0.5")
    assert selected["groups"] == 2 and selected["pairs"] == 2

    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": "What is 2 + 2?", "answer": "4"}) + "\n")
    assert cli("quarantine", "add", str(bench), "--name", "arith") == {"list": "arith", "items": 1, "added": True}
    assert cli("quarantine", "list")["lists"] == {"arith": 1}

    first, second = cli("rounds", "build"), cli("rounds", "build")
    assert (first["round"], second["round"]) == (1, 2) and first["state"] == "promoted"
    assert [r["number"] for r in cli("rounds", "list")["rounds"]] == [1, 2]
    assert cli("rounds", "show", "1")["manifest"]["round"] == 1
    assert cli("rounds", "diff", "1", "2")["a"] == 1
    assert cli("rounds", "current")["number"] == 2
    assert cli("rounds", "rollback", "2", "--reason", "bad labels") == {"round": 2, "changed": True, "current": 1}
    assert cli("rounds", "restore", "2") == {"round": 2, "changed": True, "current": 2}
    assert cli("rounds", "consume", "2", "--run", "run-7", "--model-version", "m-8", "--stage", "dpo") == {
        "round": 2, "run_id": "run-7", "model_version": "m-8", "stage": "dpo", "recorded": True}
