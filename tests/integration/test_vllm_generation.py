"""The vLLM generators against a real engine: a tiny random model served in-process and by the OpenAI server."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from flywheel.bootstrap import make_judge  # noqa: E402
from flywheel.bootstrap import nightly as run_nightly_steps  # noqa: E402
from flywheel.domain.events import CandidatesGenerated  # noqa: E402
from flywheel.domain.signals import prompt_key  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from sampling.adapters import tiny_model  # noqa: E402
from sampling.adapters.openai_server import OpenAIServerGenerator  # noqa: E402
from sampling.adapters.vllm import VLLMGenerator  # noqa: E402
from sampling.generation import (  # noqa: E402
    Candidate,
    CandidateGroup,
    SamplingSpec,
)
from sampling.probes import shipped_probes  # noqa: E402
from sampling.selection import NO_SCORED_CANDIDATES, SelectionConfig, score_group, select  # noqa: E402
from sampling.verifiers import UNPARSEABLE_JUDGEMENT  # noqa: E402
from store.db import connect_sync  # noqa: E402
from store.projections import record  # noqa: E402
from tests.conftest import settings_env  # noqa: E402
from tests.store_helpers import in_store  # noqa: E402

pytestmark = pytest.mark.vllm

KV_CACHE_BYTES = 256 * 2**20  # plenty for a 512-token model; the default would reserve 30 % of RAM per engine
MODEL_VERSION = "tiny-policy@seed0"
QUESTION = [{"role": "user", "content": "What is two plus two?"}]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Can you write a haiku about rain?"},
    {"role": "assistant", "content": "Rain on the roof."},
    {"role": "user", "content": "Another one, please."},
]


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.ensure(tmp_path_factory.getbasetemp() / "tiny-model", seed=0)


@pytest.fixture(scope="session")
def generator(policy_dir: Path) -> Iterator[VLLMGenerator]:
    gen = VLLMGenerator(policy_dir, MODEL_VERSION, kv_cache_memory_bytes=KV_CACHE_BYTES)
    gen.load()
    try:
        yield gen
    finally:
        gen.unload()


def texts(group: CandidateGroup) -> list[str]:
    return [c.text for c in group.candidates]


def test_one_prompt_gives_n_candidates_and_a_payload(generator: VLLMGenerator, policy_dir: Path) -> None:
    from transformers import AutoTokenizer

    spec = SamplingSpec(n=4, max_tokens=24, seed=11, logprobs=0)
    [group] = generator.generate([QUESTION], spec)

    assert len(group.candidates) == 4
    assert len(set(texts(group))) > 1  # four samples of a random model at temperature 1 are not all equal
    for c in group.candidates:
        assert 1 <= c.token_count <= 24
        assert c.finish_reason in {"stop", "length"}
        assert c.finish_reason != "length" or c.token_count == 24
        assert c.cumulative_logprob is not None and c.cumulative_logprob < 0
    # The prompt went through the model's chat template.
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    rendered = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"
    assert group.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    payload = group.to_event_payload()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["prompt"] == QUESTION
    assert payload["seed"] == 11
    assert payload["model_version"] == MODEL_VERSION
    assert payload["generator"] == "vllm"
    assert payload["sampling"] == {"n": 4, "temperature": 1.0, "top_p": 1.0, "max_tokens": 24, "logprobs": 0}
    assert [c["token_count"] for c in payload["candidates"]] == [c.token_count for c in group.candidates]
    assert payload["completion_tokens"] == sum(c.token_count for c in group.candidates)


def test_two_prompts_in_one_call(generator: VLLMGenerator) -> None:
    spec = SamplingSpec(n=3, max_tokens=16, seed=100)
    groups = generator.generate([QUESTION, CHAT], spec)

    assert [g.prompt for g in groups] == [tuple(QUESTION), tuple(CHAT)]
    assert [g.seed for g in groups] == [100, 103]
    assert all(len(g.candidates) == 3 for g in groups)
    assert groups[0].prompt_tokens is not None and groups[1].prompt_tokens is not None
    assert groups[1].prompt_tokens > groups[0].prompt_tokens
    assert all(c.cumulative_logprob is None for g in groups for c in g.candidates)  # no logprobs asked
    timing = generator.last_timing
    assert timing is not None and 0 < timing.engine_seconds <= timing.total_seconds


def test_same_seed_same_candidates(generator: VLLMGenerator) -> None:
    spec = SamplingSpec(n=4, max_tokens=16, seed=5)
    first = generator.generate([QUESTION, CHAT], spec)
    again = generator.generate([QUESTION, CHAT], spec)
    other = generator.generate([QUESTION, CHAT], SamplingSpec(n=4, max_tokens=16, seed=6))

    assert [texts(g) for g in first] == [texts(g) for g in again]
    assert [g.candidates for g in first] == [g.candidates for g in again]
    assert texts(first[0]) != texts(other[0])


def test_a_group_is_reproducible_from_its_recorded_seed(generator: VLLMGenerator) -> None:
    """Candidate j of a group was sampled with seed + j: k single-sample requests give the same k candidates."""
    [group] = generator.generate([CHAT], SamplingSpec(n=3, max_tokens=16, seed=40))
    singles = [
        generator.generate([CHAT], SamplingSpec(n=1, max_tokens=16, seed=group.seed + j))[0].candidates[0]
        for j in range(3)
    ]
    assert texts(group) == [c.text for c in singles]


def test_empty_batch(generator: VLLMGenerator) -> None:
    assert generator.generate([], SamplingSpec()) == []


# ---- the OpenAI-compatible server ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(policy_dir), "--served-model-name", "tiny",
        "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
        "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready in 240 s:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_server_gives_n_candidates_per_prompt(server: str) -> None:
    gen = OpenAIServerGenerator(server, "tiny", MODEL_VERSION)
    gen.load()
    spec = SamplingSpec(n=4, max_tokens=16, seed=21, logprobs=0)
    groups = gen.generate([QUESTION, CHAT], spec)

    assert [g.seed for g in groups] == [21, 25]
    for g in groups:
        assert len(g.candidates) == 4
        assert g.generator == "vllm-openai" and g.model_version == MODEL_VERSION
        assert g.prompt_tokens is not None and g.prompt_tokens > 0
        for c in g.candidates:
            assert 1 <= c.token_count <= 16
            assert c.finish_reason in {"stop", "length"}
            assert c.cumulative_logprob is not None
    assert json.loads(json.dumps(groups[0].to_event_payload())) == groups[0].to_event_payload()


def test_server_and_in_process_engine_agree(server: str, generator: VLLMGenerator) -> None:
    """Same model, spec and seed: the server samples the same candidates as the in-process engine."""
    spec = SamplingSpec(n=3, max_tokens=16, seed=60, logprobs=0)
    [remote] = OpenAIServerGenerator(server, "tiny", MODEL_VERSION).generate([CHAT], spec)
    [local] = generator.generate([CHAT], spec)
    assert texts(remote) == texts(local)
    assert [c.token_count for c in remote.candidates] == [c.token_count for c in local.candidates]
    assert remote.prompt_tokens == local.prompt_tokens


def test_server_load_refuses_an_unknown_model(server: str) -> None:
    with pytest.raises(RuntimeError, match="not served"):
        OpenAIServerGenerator(server, "no-such-model", MODEL_VERSION).load()


def record_group(settings: Settings, prompt: list[dict[str, str]], texts: list[str],
                 model_version: str = MODEL_VERSION) -> None:
    group = CandidateGroup(prompt=tuple(prompt), candidates=tuple(
        Candidate(text=t, token_count=1, cumulative_logprob=None, finish_reason="stop") for t in texts),
        spec=SamplingSpec(n=len(texts), seed=1), seed=1, model_version=model_version, prompt_tokens=5,
        generator="vllm")
    case = {"prompt_key": prompt_key(prompt), "app_id": "app-a", "tags": []}
    in_store(settings.database_url, lambda conn: record(
        conn, [CandidatesGenerated.for_case(str(uuid.uuid4()), case, group.to_event_payload())]))


def selections(settings: Settings) -> list[tuple[dict[str, Any], str]]:
    with connect_sync(settings.database_url) as conn:
        return [(s, v) for s, v in conn.execute(
            "SELECT g.selection, e.data ->> 'selector_version' FROM candidate_groups g"
            " JOIN events e ON e.position = g.selected_position ORDER BY g.position").fetchall()]


def assert_every_grade_parsed(selection: dict[str, Any], judge_model: str) -> None:
    """A tiny random model held to the structured output still gives a grade for every candidate."""
    grades = [s for c in selection["scores"] for s in c["scores"] if s["scorer"] == "llm_judge"]
    assert grades and all(s["reason"] == "" and s["value"] in range(1, 11) for s in grades), grades
    assert all(isinstance(s.get("rationale", ""), str) and s["judge_model"] == judge_model and s["rubric_hash"]
               for s in grades)


def test_select_grades_with_the_judge_through_the_server_and_refuses_the_policy_as_judge(
    server: str, settings: Settings, tmp_path: Path,
) -> None:
    """`flywheel select --judge-rubric`: the judge is FLYWHEEL_JUDGE_URL/_MODEL. Here it serves the policy too, so
    it is refused until allowed; then every candidate has a grade, its rationale, the judge's name and version and
    the rubric's hash."""
    record_group(settings, QUESTION, ["4", "5", "four"])
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Reward correct arithmetic.\n")
    judged = settings.model_copy(update={"judge_url": server, "judge_model": "tiny", "judge_rationale_chars": 40,
                                         "generator_url": server, "generator_model": "tiny",
                                         "generator_model_version": MODEL_VERSION})
    command = [sys.executable, "-m", "flywheel", "select", "--judge-rubric", str(rubric), "--sft-threshold", "5",
               "--min-margin", "1", "--json"]
    refused = subprocess.run(command, env=settings_env(judged), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "the judge is the policy" in refused.stderr
    assert "FLYWHEEL_JUDGE_MAY_BE_POLICY" in refused.stderr and selections(settings) == []

    done = subprocess.run([*command, "--judge-may-be-policy"], env=settings_env(judged), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["groups"] == 1
    [(selection, version)] = selections(settings)
    assert [[s["scorer"] for s in c["scores"]] for c in selection["scores"]] == [["llm_judge"]] * 3
    assert_every_grade_parsed(selection, "tiny")
    assert all(s["version"].startswith("2+tiny+rubric.") for c in selection["scores"] for s in c["scores"])
    assert selection["decided_by"] == "llm_judge" and len(selection["ranks"]) == 3
    assert "llm_judge@2+tiny+rubric." in version


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model (other weights than the policy), to judge it."""
    return tiny_model.ensure(tmp_path_factory.getbasetemp() / "tiny-judge", seed=1)


def test_an_in_process_judge_gives_parseable_grades_and_a_reply_that_breaks_the_format_is_no_score(
    judge_dir: Path, policy_dir: Path,
) -> None:
    judge = make_judge(Settings(judge_model=str(judge_dir), generator_model=str(policy_dir),
                                generator_model_version=MODEL_VERSION, judge_rationale_chars=40),
                       "Reward correct arithmetic.")
    assert isinstance(judge.generator, VLLMGenerator)
    judge.generator.kv_cache_memory_bytes = KV_CACHE_BYTES
    judge.load()
    try:
        graded = score_group([judge], QUESTION, ["4", "5", "four", "The answer is 4."])
        assert all(c.scores[0].value in range(1, 11) and c.scores[0].reason == "" for c in graded), graded
        assert all(c.scores[0].judge_model == str(judge_dir) and c.scores[0].rubric_hash for c in graded)

        # The same engine cut short after 3 tokens: its replies break the format, so they are no score, and
        # the group makes neither an SFT sample nor a pair.
        judge.spec = dataclasses.replace(judge.spec, max_tokens=3)
        broken = score_group([judge], QUESTION, ["4", "5"])
    finally:
        judge.unload()
    assert [c.scores[0].value for c in broken] == [None, None]
    assert [c.scores[0].reason for c in broken] == [UNPARSEABLE_JUDGEMENT] * 2
    nothing = select(QUESTION, broken, SelectionConfig(scorer="llm_judge", sft_threshold=1, min_margin=1,
                                                       length_guard_margin=1))
    assert (nothing.sft, nothing.pair, nothing.reasons) == (None, None, (NO_SCORED_CANDIDATES,))


def test_the_nightly_select_grades_with_the_judge_and_the_checks_veto(
    server: str, settings: Settings, tmp_path: Path,
) -> None:
    """The judge is the server's model, the groups another model's: the nightly select grades every candidate, and
    of a checkable prompt only the right answer can be the best, whatever its grade."""
    right = "The answer is 4."
    record_group(settings, QUESTION, ["It is 5.", right, "no idea"], model_version="other-policy@v2")
    record_group(settings, CHAT, ["Rain.", "Rain on the roof."], model_version="other-policy@v2")
    rubric, checks = tmp_path / "rubric.txt", tmp_path / "checks.jsonl"
    rubric.write_text("Reward correct, brief answers.\n")
    checks.write_text(json.dumps({"prompt": QUESTION[0]["content"], "answer": 4}) + "\n")
    nightly = settings.model_copy(update={
        "nightly_steps": "select", "judge_url": server, "judge_model": "tiny", "judge_rationale_chars": 40,
        "judge_rubric": str(rubric), "select_checks": str(checks), "select_decide_by": "llm_judge",
        "select_sft_threshold": 1.0, "select_min_margin": 1.0})
    report = run_nightly_steps(nightly)
    assert report["select"]["groups"] == 2 and report["select"]["not_judged"] == 0
    (checked, _), (free, _) = selections(settings)
    assert_every_grade_parsed(checked, "tiny")
    assert_every_grade_parsed(free, "tiny")
    assert checked["vetoed"] == [0, 2] and checked["best_index"] == 1
    assert checked["sft"]["messages"][-1] == {"role": "assistant", "content": right}
    assert checked["pair"] is None or checked["pair"]["chosen"] == right
    # The same run had the judge grade the shipped bias probes: every grade parsed, and the audit is recorded.
    assert list(report["select"]["audit"]["probe_accuracy"]) == ["llm_judge"]
    with connect_sync(settings.database_url) as conn:
        [(audit,)] = conn.execute("SELECT audit FROM scorer_probes WHERE scorer = 'llm_judge'").fetchall()
    # The tiny judge's 512-token context cannot hold the longest probes: the server refuses those, and they are
    # no score (so not right), while the run goes on; the rest are graded.
    assert audit["probes"] == len(shipped_probes()) and audit["no_score"] < audit["probes"] // 2
    assert audit["accuracy"] == report["select"]["audit"]["probe_accuracy"]["llm_judge"]
    assert audit["flagged"] == (audit["accuracy"] < 0.8) and audit["version"].startswith("2+tiny+rubric.")


class PairsOnly:
    """The two reads of the audit, in memory: two users' pairs about QUESTION, no earlier probe audit."""

    def __init__(self) -> None:
        self.recorded: list[Any] = []

    async def user_pairs(self, prompt_keys: list[str], limit: int) -> list[dict[str, Any]]:
        return [{"pair_id": f"p{i}", "prompt_key": prompt_key(QUESTION), "prompt": QUESTION, "chosen": chosen,
                 "rejected": rejected, "tie": False, "rule": "comparison_pair", "app_id": "tutor",
                 "model_version": MODEL_VERSION}
                for i, (chosen, rejected) in enumerate([("4", "5"), ("The answer is 4.", "I am not sure.")])]

    async def probe_audits(self) -> dict[str, dict[str, Any]]:
        return {}

    async def record(self, events: list[Any]) -> list[str]:
        self.recorded.extend(events)
        return [e.event_id for e in events]


def test_an_in_process_judge_scores_the_users_pairs_and_the_probes(judge_dir: Path, policy_dir: Path) -> None:
    import asyncio

    from flywheel.domain.events import BiasProbesScored, UserPairsScored
    from flywheel.domain.pairwise import judgements_of, pairwise_agreement
    from flywheel.services.audit_scorers import Auditing, audit_scorers

    judge = make_judge(Settings(judge_model=str(judge_dir), generator_model=str(policy_dir),
                                generator_model_version=MODEL_VERSION, judge_rationale_chars=40),
                       "Reward correct, helpful, honest answers.")
    assert isinstance(judge.generator, VLLMGenerator)
    judge.generator.kv_cache_memory_bytes = KV_CACHE_BYTES
    probes = shipped_probes()[::6]  # one in six: every category, a sixth of the engine time
    store = PairsOnly()
    judge.load()
    try:
        out = asyncio.run(audit_scorers(store, [judge], Auditing(probes=probes, min_accuracy=0.8),  # type: ignore[arg-type]
                                        run="run-1", prompt_keys=[prompt_key(QUESTION)]))
    finally:
        judge.unload()
    [scored] = [e for e in store.recorded if isinstance(e, UserPairsScored)]
    assert out.pairs_scored == 2 and scored.scorers == (f"llm_judge@{judge.version}",)
    assert all(v in range(1, 11) for p in scored.pairs for v in p["scores"]["llm_judge"])  # every grade parsed
    judgements = judgements_of(scored, "1")
    assert {j.rater for j in judgements} == {"users", "llm_judge"} and len(judgements) == 4
    assert pairwise_agreement(judgements, resamples=50).items == 2
    [probed] = [e for e in store.recorded if isinstance(e, BiasProbesScored)]
    # A probe too long for the tiny judge's context is cut short: no score; the others parse.
    assert probed.audit["probes"] == len(probes) and probed.audit["no_score"] < len(probes) // 2
    assert {c for c in probed.audit["by_category"]} == {p.category for p in probes}
    assert probed.audit["flagged"] == (probed.audit["accuracy"] < 0.8)
