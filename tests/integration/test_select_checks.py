"""`flywheel select --checks`: checkable prompts are judged by their verifiers, through the CLI (real Postgres)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from flywheel.bootstrap import hard_cases
from flywheel.domain.events import CandidatesGenerated
from flywheel.services.sample import sample_hard_cases
from flywheel.settings import Settings
from flywheel.simulator import generate
from sampling.adapters.checks import last_user_text
from sampling.generation import Candidate, CandidateGroup, SamplingSpec
from sampling.hardcases import SamplerConfig
from store.projections import record
from tests.integration.test_hardcase_loop import query
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store, sampled_cases

pytestmark = pytest.mark.integration

ANSWERS = ["The answer is 42.", "I think 41", "no idea"]
CODE = ["```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b): return a - b",
        "def add(a, b): return b + a"]


def test_select_scores_checkable_prompts_with_their_verifiers(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path,
) -> None:
    url = settings.database_url
    ingest_all(url, [m.value for m in generate(1500, seed=3) if m.expected_reason is None], [500])
    sampled = in_store(url, lambda conn: sample_hard_cases(hard_cases(conn), SamplerConfig(budget=3, seed=1)))
    cases = sampled_cases(url, sampled.sample_id)
    chosen = [c["messages"] for c in cases]
    assert len(chosen) == 3
    spec = SamplingSpec(n=3, seed=7)
    groups = [CandidateGroup(prompt=tuple(prompt), candidates=tuple(
        Candidate(text=t, token_count=len(t.split()), cumulative_logprob=None, finish_reason="stop") for t in texts),
        spec=spec, seed=spec.prompt_seed(i), model_version="m-test", prompt_tokens=10, generator="vllm")
        for i, (prompt, texts) in enumerate(zip(chosen, [ANSWERS, CODE, ["a", "b", "c"]], strict=True))]
    events = [CandidatesGenerated.for_case(sampled.sample_id, c, g.to_event_payload())
              for c, g in zip(cases, groups, strict=True)]
    assert len(in_store(url, lambda conn: record(conn, events))) == 3

    checks = tmp_path / "checks.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": last_user_text(chosen[0]), "answer": "forty-two"}) + "\n")
    refused = run_cli("select", "--checks", str(bad), check=False)
    assert refused.returncode == 2 and f"{bad}:1: expected answer 'forty-two' has no number" in refused.stderr

    checks.write_text("\n".join(json.dumps(c) for c in [
        {"prompt": last_user_text(chosen[0]), "answer": 42},
        {"prompt": last_user_text(chosen[1]), "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0",
         "timeout_s": 20},
    ]) + "\n")
    out = json.loads(run_cli("select", "--checks", str(checks), "--min-margin", "0.5", "--sft-threshold", "1",
                             "--json").stdout)
    # the third prompt has no check and there is no other scorer: it is left for a later run to judge
    assert (out["groups"], out["sft_samples"], out["pairs"], out["not_judged"]) == (2, 2, 2, 1)
    assert out["reasons"] == {}
    typo = run_cli("select", "--checks", str(checks), "--decide-by", "numeric_anwser", check=False)
    assert typo.returncode == 2 and "no such scorer configured (have: numeric_answer, python_tests)" in typo.stderr

    rows = query(url, "SELECT g.selection, e.data ->> 'selector_version' FROM candidate_groups g"
                      " JOIN events e ON e.position = g.selected_position ORDER BY g.position")
    (answer, answer_by), (code, code_by) = rows
    assert [s["scores"][0]["scorer"] for s in answer["scores"]] == ["numeric_answer"] * 3
    assert [s["scores"][0]["value"] for s in answer["scores"]] == [1.0, 0.0, 0.0]
    assert (answer["pair"]["chosen"], answer["pair"]["rejected"]) == (ANSWERS[0], ANSWERS[1])
    assert [s["scores"][0]["value"] for s in code["scores"]] == [1.0, 0.0, 1.0]
    assert "wrong_answer" not in json.dumps(code) and "tests_failed" in json.dumps(code["scores"][1])
    assert "numeric_answer@1" in answer_by and "python_tests@1" in code_by
    later = json.loads(run_cli("select", "--verify-json", "--json").stdout)  # another scorer judges the rest
    assert (later["groups"], later["not_judged"]) == (1, 0)


def test_select_refuses_a_check_that_is_a_quarantine_item(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path,
) -> None:
    benchmark = tmp_path / "eval.jsonl"
    item_prompt = "A train leaves the station at noon travelling sixty miles per hour towards the coast."
    item_tests = "assert solve_train_problem(60, 3) == 180\nassert solve_train_problem(0, 5) == 0"
    benchmark.write_text(json.dumps({"prompt": item_prompt, "answer": item_tests}) + "\n")
    run_cli("quarantine", "add", str(benchmark), "--name", "trains")
    checks = tmp_path / "checks.jsonl"
    checks.write_text("\n".join(json.dumps(c) for c in [
        {"prompt": "What is 6 * 7?", "answer": 42},
        {"prompt": item_prompt.upper(), "answer": 180},  # the eval prompt, reformatted
        {"prompt": "Write solve_train_problem(speed, hours).", "tests": item_tests},  # the eval answer
    ]) + "\n")
    refused = run_cli("select", "--checks", str(checks), check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refusing checks that are evaluation items" in refused.stderr
    assert f"{checks}:2 matches quarantine item" in refused.stderr and "(prompt)" in refused.stderr
    assert f"{checks}:3 matches quarantine item" in refused.stderr and "(answer)" in refused.stderr
    assert f"{checks}:1 " not in refused.stderr
    assert query(settings.database_url, "SELECT count(*) FROM events WHERE type = 'candidates_selected'") == [(0,)]

    checks.write_text(json.dumps({"prompt": "What is 6 * 7?", "answer": 42}) + "\n")
    assert json.loads(run_cli("select", "--checks", str(checks), "--json").stdout)["groups"] == 0
