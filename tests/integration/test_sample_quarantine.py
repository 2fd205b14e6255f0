"""The hard-case sampler leaves out quarantined prompts and rolled-back slices, from the CLI and from the nightly
job, as a round build does (real Postgres and broker)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flywheel.bootstrap import nightly as run_steps
from flywheel.domain.messages import message_text, turns_text
from flywheel.domain.rounds import QuarantineIndex, QuarantineItem, QuarantineList, RoundConfig
from flywheel.settings import Settings
from flywheel.simulator import generate
from streams.topics import ensure_topics
from tests.integration.test_hardcase_loop import query
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import sampled_cases

pytestmark = pytest.mark.integration

Cli = Callable[..., subprocess.CompletedProcess[str]]




def slice_interactions(url: str, cases: list[dict[str, Any]], app: str, model: str) -> int:
    ids = [i for c in cases for i in c["interaction_ids"]]
    [(n,)] = query(url, "SELECT count(*) FROM interactions WHERE interaction_id = ANY(%s) AND app_id = %s"
                        " AND model_version = %s", [ids, app, model])
    return int(n)


def test_the_cli_and_the_nightly_sampler_leave_out_quarantined_prompts_and_rolled_back_slices(
        settings: Settings, run_cli: Cli, tmp_path: Path) -> None:
    url = settings.database_url
    ensure_topics(settings.kafka_bootstrap, settings)
    ingest_all(url, [m.value for m in generate(1500, seed=6) if m.expected_reason is None], [500])
    before = json.loads(run_cli("sample", "--budget", "1000", "--json").stdout)
    cases = sampled_cases(url, before["sample_id"])
    assert before["quarantine"] == {"version": "", "contaminated_prompts": 0, "items": {},
                                    "sliced_interactions": 0}

    # An eval item that is one chosen prompt's longest user turn, and a rollback slice of another app.
    target = max(cases, key=lambda c: max(len(message_text(m).split()) for m in c["messages"]
                                          if m["role"] == "user"))
    turn = max((message_text(m) for m in target["messages"] if m["role"] == "user"), key=lambda t: len(t.split()))
    assert len(turn.split()) >= 8
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"prompt": turn, "answer": "an unrelated reference answer of several words"}) + "\n")
    run_cli("quarantine", "add", str(evals), "--name", "bench-eval")
    other = next(c for c in cases if c["app_id"] != target["app_id"])
    app, model = other["app_id"], other["model_version"]
    assert slice_interactions(url, cases, app, model) > 0
    run_cli("rounds", "build", "--json")
    run_cli("rounds", "rollback", "1", "--reason", "bad slice", "--quarantine", f"app_id={app}",
            "--quarantine", f"model_version={model}")

    index = QuarantineIndex.for_config(QuarantineList(version="v", items=(QuarantineItem(
        item_id="x", list_name="bench-eval", prompt=turn, answer="-"),)), RoundConfig())
    after = json.loads(run_cli("sample", "--budget", "1000", "--json").stdout)
    nightly = run_steps(settings.model_copy(update={"nightly_steps": "sample", "nightly_budget": 1000}))["sample"]
    for sample_id, contaminated, sliced in ((after["sample_id"], after["quarantine"]["contaminated_prompts"],
                                             after["quarantine"]["sliced_interactions"]),
                                            (nightly["sample_id"], nightly["contaminated"], nightly["sliced"])):
        assert sample_id != before["sample_id"]  # another quarantine list: another sample
        chosen = sampled_cases(url, sample_id)
        assert chosen and contaminated >= 1 and sliced > 0
        assert target["prompt_key"] not in {c["prompt_key"] for c in chosen}
        assert not any(index.hits(turns_text(c["messages"])) for c in chosen)
        assert slice_interactions(url, chosen, app, model) == 0
    assert after["excluded"]["quarantined"] > 0 and after["quarantine"]["version"]
    assert list(after["quarantine"]["items"].values()) == [after["quarantine"]["contaminated_prompts"]]
