"""The select use case on a fake store, and the judge's wiring: checks that refuse before anything is loaded or
recorded, models loaded only for work, and a judge that is the policy refused unless allowed."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from flywheel.bootstrap import make_judge, scoring
from flywheel.domain.events import CandidatesSelected
from flywheel.services.select import JudgeIsPolicy, Scoring, select_candidates
from flywheel.settings import Settings
from sampling.adapters.openai_server import OpenAIServerGenerator
from sampling.adapters.reward_model import model_dir_version
from sampling.adapters.vllm import VLLMGenerator
from sampling.judge import JudgeScorer, judgement_pattern, parse_judgement
from sampling.selection import NoDecidingScorer, SelectionConfig
from sampling.verifiers import NumericAnswerVerifier

PROMPT = [{"role": "user", "content": "What is 6 times 7?"}]


class Store:
    """The two calls select makes, in memory."""

    def __init__(self, *groups: dict[str, Any]) -> None:
        self.groups = list(groups)
        self.recorded: list[CandidatesSelected] = []

    async def unselected(self, sample_id: str | None) -> list[dict[str, Any]]:
        done = {e.group_id for e in self.recorded}
        return [g for g in self.groups if g["group_id"] not in done]

    async def record(self, events: list[CandidatesSelected]) -> list[str]:
        self.recorded.extend(events)
        return [e.event_id for e in events]


def group(group_id: str, texts: list[str], model_version: str = "policy-v1") -> dict[str, Any]:
    return {"group_id": group_id, "prompt_key": "k", "prompt": PROMPT, "model_version": model_version,
            "candidates": [{"index": i, "text": t} for i, t in enumerate(texts)]}


class Judge:
    """A judge model with canned replies, that counts its loads."""

    def __init__(self, *replies: str) -> None:
        self.replies = replies
        self.loads = self.unloads = 0

    def load(self) -> None:
        self.loads += 1

    def unload(self) -> None:
        self.unloads += 1

    def generate(self, prompts: list[list[dict[str, Any]]], spec: Any) -> list[Any]:
        from sampling.generation import Candidate

        class Replied:
            def __init__(self, text: str) -> None:
                self.candidates = (Candidate(text=text, token_count=1, cumulative_logprob=None, finish_reason="stop"),)

        return [Replied(r) for r in self.replies[:len(prompts)]]


def judge_of(model: Judge, version: str = "judge-v1") -> JudgeScorer:
    return JudgeScorer(model, "Reward correct arithmetic.", None, model="judge", model_version=version)


GRADED = ('{"rationale": "Right.", "score": 9}', '{"rationale": "Off by one.", "score": 2}', "I refuse to grade")
BY_JUDGE = SelectionConfig(scorer="llm_judge", sft_threshold=8, min_margin=2, length_guard_margin=2)


def test_a_judged_group_records_grades_rationales_and_the_no_score_of_a_broken_reply() -> None:
    store, model = Store(group("g1", ["42", "41", "40"])), Judge(*GRADED)
    out = asyncio.run(select_candidates(store, Scoring(config=BY_JUDGE, scorers=[judge_of(model)])))
    assert (out.groups, out.sft_samples, out.pairs) == (1, 1, 1)
    assert (model.loads, model.unloads) == (1, 1)
    [event] = store.recorded
    payload = event.selection
    assert payload["pair"]["margin"] == 7.0 and payload["pair"]["rejected_index"] == 1  # not the ungraded one
    assert payload["decided_by"] == "llm_judge" and [r["index"] for r in payload["ranks"]] == [0, 1]
    third = payload["scores"][2]["scores"][0]
    assert third["value"] is None and third["reason"] == "unparseable_judgement" and third["judge_model"] == "judge"
    assert payload["scores"][0]["scores"][0]["rationale"] == "Right."
    assert payload["scores"][0]["scores"][0]["rubric_hash"] == judge_of(model).rubric_hash


def test_nothing_to_select_loads_no_model() -> None:
    model = Judge(*GRADED)
    out = asyncio.run(select_candidates(Store(), Scoring(config=BY_JUDGE, scorers=[judge_of(model)])))
    assert out.groups == 0 and model.loads == 0


def test_a_judge_grading_its_own_models_candidates_is_refused_before_anything_is_loaded_unless_allowed() -> None:
    store, model = Store(group("g1", ["42", "41"]), group("g2", ["42", "41"], model_version="judge-v1")), Judge(*GRADED)
    plan = Scoring(config=BY_JUDGE, scorers=[judge_of(model)])
    with pytest.raises(JudgeIsPolicy, match="generated the candidates of group g2"):
        asyncio.run(select_candidates(store, plan))
    assert store.recorded == [] and model.loads == 0
    allowed = Scoring(config=BY_JUDGE, scorers=[judge_of(model)], judge_may_be_policy=True)
    assert asyncio.run(select_candidates(store, allowed)).groups == 2


def test_thresholds_off_the_deciders_scale_or_no_decider_refuse_the_run_before_anything_is_recorded() -> None:
    store = Store(group("g1", ["42", "41"]))
    off_scale = Scoring(config=SelectionConfig(scorer="llm_judge"), scorers=[judge_of(Judge(*GRADED))])
    with pytest.raises(ValueError, match="0.8 is off llm_judge's scale 1-10"):
        asyncio.run(select_candidates(store, off_scale))
    two = Scoring(config=SelectionConfig(sft_threshold=1, min_margin=0.5, length_guard_margin=0.5),
                  scorers=[judge_of(Judge(*GRADED))], scorers_for=lambda prompt: [NumericAnswerVerifier("42")])
    with pytest.raises(NoDecidingScorer):
        asyncio.run(select_candidates(store, two))
    assert store.recorded == []


def test_a_failed_check_vetoes_the_judges_favourite() -> None:
    """The judge grades the wrong answer 9; the numeric check fails it, so the right answer is chosen."""
    store = Store(group("g1", ["It is 41.", "It is 42."]))
    model = Judge('{"rationale": "Great.", "score": 9}', '{"rationale": "Terse.", "score": 6}')
    plan = Scoring(config=SelectionConfig(scorer="numeric_answer", sft_threshold=1, min_margin=1,
                                          length_guard_margin=1),
                   scorers=[judge_of(model)], scorers_for=lambda prompt: [NumericAnswerVerifier("42")],
                   check_names=frozenset({"numeric_answer"}))
    assert plan.names == {"llm_judge", "numeric_answer"}
    out = asyncio.run(select_candidates(store, plan))
    assert (out.sft_samples, out.pairs) == (1, 1)
    pair = store.recorded[0].selection["pair"]
    assert (pair["chosen"], pair["rejected"]) == ("It is 42.", "It is 41.")
    assert store.recorded[0].selection["vetoed"] == [0]


# ---- the judge's wiring ----


def model_dir(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_the_judge_is_a_model_of_its_own_with_structured_output(tmp_path: Path) -> None:
    judge_dir = model_dir(tmp_path / "judge", b"judge weights")
    settings = Settings(judge_model=str(judge_dir), generator_model=str(model_dir(tmp_path / "policy", b"policy")),
                        judge_rationale_chars=40)
    judge = make_judge(settings, "Be strict.")
    assert isinstance(judge.generator, VLLMGenerator) and judge.generator.model_path == judge_dir
    assert judge.model_version == model_dir_version(judge_dir) and judge.judge_model == str(judge_dir)
    assert judge.spec.output_pattern == judgement_pattern(40) and judge.spec.max_tokens == 72
    assert (judge.spec.n, judge.spec.temperature) == (1, 0.0)
    reply = '{"rationale": "Fine.", "score": 7}'
    assert re.fullmatch(judge.spec.output_pattern, reply) and parse_judgement(reply).value == 7.0

    served = make_judge(Settings(judge_url="http://127.0.0.1:9/", judge_model="judge-7b",
                                 generator_url="http://127.0.0.1:9", generator_model="policy-7b"), "Be strict.")
    assert isinstance(served.generator, OpenAIServerGenerator) and served.model_version == "judge-7b"


@pytest.mark.parametrize("case", ["same path", "same files", "same server", "same version"])
def test_the_policy_as_its_own_judge_is_refused_unless_allowed(tmp_path: Path, case: str) -> None:
    policy = model_dir(tmp_path / "policy", b"policy weights")
    settings = {
        "same path": Settings(judge_model=str(policy), generator_model=str(tmp_path / "policy" / ".")),
        "same files": Settings(judge_model=str(model_dir(tmp_path / "copy", b"policy weights")),
                               generator_model=str(policy)),
        "same server": Settings(judge_url="http://127.0.0.1:9/", judge_model="tiny",
                                generator_url="http://127.0.0.1:9", generator_model="tiny"),
        "same version": Settings(judge_url="http://127.0.0.1:9", judge_model="tiny", judge_model_version="p-1",
                                 generator_url="http://127.0.0.1:8", generator_model="tiny",
                                 generator_model_version="p-1"),
    }[case]
    with pytest.raises(JudgeIsPolicy, match="FLYWHEEL_JUDGE_MAY_BE_POLICY"):
        make_judge(settings, "Be strict.")
    assert make_judge(settings.model_copy(update={"judge_may_be_policy": True}), "Be strict.").name == "llm_judge"


def test_select_is_configured_from_the_settings(tmp_path: Path) -> None:
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Reward correct arithmetic.")
    checks = tmp_path / "checks.jsonl"
    checks.write_text('{"prompt": "What is 6 times 7?", "answer": 42}\n')
    settings = Settings(judge_model=str(model_dir(tmp_path / "judge", b"j")), judge_rubric=str(rubric),
                        select_checks=str(checks), select_decide_by="numeric_answer", select_sft_threshold=1,
                        select_min_margin=1)
    plan = scoring(settings)
    assert plan.names == {"llm_judge", "numeric_answer"}
    assert plan.config == SelectionConfig(scorer="numeric_answer", sft_threshold=1, min_margin=1,
                                          length_guard_margin=1)
    assert plan.scorers_for is not None and [s.name for s in plan.scorers_for(PROMPT)] == ["numeric_answer"]
    with pytest.raises(ValueError, match="FLYWHEEL_JUDGE_MODEL"):
        scoring(Settings(judge_rubric=str(rubric)))
    with pytest.raises(OSError):
        scoring(settings.model_copy(update={"judge_rubric": str(tmp_path / "missing.txt")}))
