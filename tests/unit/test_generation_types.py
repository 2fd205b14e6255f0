"""Generation domain types: sampling spec, per-prompt seeds, candidate group payloads, server response parsing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sampling.adapters.openai_server import OpenAIServerGenerator
from sampling.adapters.reward_model import RewardModelScorer, model_dir_version
from sampling.adapters.vllm import VLLMGenerator
from sampling.generation import (
    Candidate,
    CandidateGroup,
    Generator,
    Messages,
    SamplingSpec,
    TransientEngineError,
)
from sampling.judge import JudgeScorer
from sampling.verifiers import Scorer

PROMPT = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"})


def group(**overrides: object) -> CandidateGroup:
    fields: dict[str, object] = {
        "prompt": PROMPT,
        "candidates": (
            Candidate(text="4", token_count=2, cumulative_logprob=-0.5, finish_reason="stop"),
            Candidate(text="four, I think", token_count=5, cumulative_logprob=None, finish_reason="length"),
        ),
        "spec": SamplingSpec(n=2, temperature=0.7, top_p=0.9, max_tokens=5, seed=10, logprobs=0),
        "seed": 10,
        "model_version": "policy-v3",
        "prompt_tokens": 17,
        "generator": "vllm",
    }
    fields.update(overrides)
    return CandidateGroup(**fields)  # type: ignore[arg-type]


def test_payload_shape_is_json_and_complete() -> None:
    payload = group().to_event_payload()
    assert json.loads(json.dumps(payload)) == payload
    assert payload == {
        "prompt": [dict(m) for m in PROMPT],
        "candidates": [
            {"index": 0, "text": "4", "token_count": 2, "cumulative_logprob": -0.5, "finish_reason": "stop"},
            {"index": 1, "text": "four, I think", "token_count": 5, "cumulative_logprob": None,
             "finish_reason": "length"},
        ],
        "sampling": {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "logprobs": 0},
        "seed": 10,
        "model_version": "policy-v3",
        "generator": "vllm",
        "prompt_tokens": 17,
        "completion_tokens": 7,
    }


def test_records_are_frozen() -> None:
    g = group()
    with pytest.raises(AttributeError):
        g.seed = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        g.spec.n = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        SamplingSpec(4)  # type: ignore[call-arg]  # keyword-only


@pytest.mark.parametrize("n", [1, 2, 4, 7])
@pytest.mark.parametrize("base", [0, 5, 1000])
def test_prompt_seeds_give_every_candidate_of_a_batch_its_own_seed(n: int, base: int) -> None:
    spec = SamplingSpec(n=n, seed=base)
    prompts = 5
    # vLLM seeds candidate j of a request with seed `s` as s + j.
    seeds = [spec.prompt_seed(i) + j for i in range(prompts) for j in range(n)]
    assert seeds == list(range(base, base + prompts * n))
    assert spec.prompt_seed(0) == base


def test_prompt_seed_depends_only_on_spec_and_index() -> None:
    assert SamplingSpec(n=4, seed=3).prompt_seed(2) == SamplingSpec(n=4, seed=3, temperature=0.1).prompt_seed(2) == 11


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": True},
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"seed": -1},
        {"logprobs": -1},
        {"output_pattern": "(unclosed"},
    ],
)
def test_spec_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingSpec(**kwargs)  # type: ignore[arg-type]


def test_adapters_satisfy_the_ports_without_loading_anything(tmp_path: Path) -> None:
    assert isinstance(VLLMGenerator("/nowhere", "v0"), Generator)
    assert isinstance(OpenAIServerGenerator("http://127.0.0.1:1", "m", "v0"), Generator)
    (tmp_path / "config.json").write_text("{}")
    assert isinstance(RewardModelScorer(tmp_path), Scorer)
    with pytest.raises(FileNotFoundError):
        RewardModelScorer(tmp_path / "missing")


def test_importing_the_adapters_imports_no_heavy_library() -> None:
    code = (
        "import sys, sampling.generation, sampling.adapters.reward_model, sampling.adapters.tiny_model\n"
        "heavy = {'vllm', 'torch', 'transformers', 'tokenizers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_vllm_generator_refuses_to_generate_before_load() -> None:
    with pytest.raises(RuntimeError, match="load"):
        VLLMGenerator("/nowhere", "v0").generate([PROMPT], SamplingSpec())


def test_server_request_body_asks_for_n_in_one_request() -> None:
    gen = OpenAIServerGenerator("http://127.0.0.1:8000/", "tiny", "v1")
    spec = SamplingSpec(n=3, temperature=0.5, top_p=0.8, max_tokens=9, seed=20, logprobs=2)
    body = gen.request_body(PROMPT, spec, spec.prompt_seed(1))
    assert body == {
        "model": "tiny",
        "messages": [dict(m) for m in PROMPT],
        "n": 3,
        "temperature": 0.5,
        "top_p": 0.8,
        "max_tokens": 9,
        "seed": 23,
        "return_token_ids": True,
        "logprobs": True,
        "top_logprobs": 2,
    }
    assert "logprobs" not in gen.request_body(PROMPT, SamplingSpec(), 0)
    assert "structured_outputs" not in body
    assert gen.base_url == "http://127.0.0.1:8000"


def test_an_output_pattern_asks_the_engine_for_structured_output() -> None:
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=40, output_pattern=r"[0-9]{1,2}")
    body = OpenAIServerGenerator("http://127.0.0.1:8000", "judge", "v1").request_body(PROMPT, spec, 0)
    assert body["structured_outputs"] == {"regex": r"[0-9]{1,2}"}
    assert spec.to_payload()["output_pattern"] == r"[0-9]{1,2}"
    assert "output_pattern" not in SamplingSpec().to_payload()  # the payloads of policy groups are unchanged


def test_server_response_becomes_a_group() -> None:
    gen = OpenAIServerGenerator("http://127.0.0.1:8000", "tiny", "v1")
    spec = SamplingSpec(n=2, max_tokens=3, seed=4, logprobs=0)
    response = {
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "b c"}, "finish_reason": "length",
             "token_ids": [7, 8, 9],
             "logprobs": {"content": [{"logprob": -1.0}, {"logprob": -2.0}, {"logprob": -0.5}]}},
            {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop",
             "token_ids": [5, 2], "logprobs": {"content": [{"logprob": -0.25}, {"logprob": -0.25}]}},
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5},
        "prompt_token_ids": list(range(12)),
    }
    g = gen._group(PROMPT, response, spec, 4)
    assert [c.text for c in g.candidates] == ["a", "b c"]
    assert [c.token_count for c in g.candidates] == [2, 3]
    assert [c.cumulative_logprob for c in g.candidates] == [-0.5, -3.5]
    assert [c.finish_reason for c in g.candidates] == ["stop", "length"]
    assert (g.prompt_tokens, g.seed, g.generator, g.model_version) == (12, 4, "vllm-openai", "v1")


def test_server_response_without_extensions_falls_back_to_usage() -> None:
    gen = OpenAIServerGenerator("http://127.0.0.1:8000", "tiny", "v1")
    response = {
        "choices": [{"index": 0, "message": {"content": None}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 0},
    }
    g = gen._group(PROMPT, response, SamplingSpec(n=1), 0)
    assert g.candidates == (Candidate(text="", token_count=0, cumulative_logprob=None, finish_reason="stop"),)
    assert g.prompt_tokens == 12


class FakeGenerator:
    """Answers every prompt with its own index as the judge's score: shows groups fit the judge's port."""

    name = "fake"
    model_version = "fake-1"

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        return [
            group(
                prompt=tuple(p),
                candidates=(Candidate(text=f'{{"rationale": "", "score": {i + 1}}}', token_count=3,
                                      cumulative_logprob=None, finish_reason="stop"),),
                spec=spec,
                seed=spec.prompt_seed(i),
            )
            for i, p in enumerate(prompts)
        ]


def test_candidate_groups_drive_the_llm_judge() -> None:
    fake = FakeGenerator()
    assert isinstance(fake, Generator)
    judge = JudgeScorer(fake, "Be strict.", SamplingSpec(n=1, temperature=0.0, max_tokens=16), model="fake",
                        model_version=fake.model_version)
    assert judge.score([dict(m) for m in PROMPT], ["x", "y", "z"]) == [1.0, 2.0, 3.0]


def test_model_dir_version_follows_the_bytes_that_decide_scores(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"num_labels": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    first = model_dir_version(tmp_path)
    (tmp_path / "README.md").write_text("docs do not change scores")
    assert model_dir_version(tmp_path) == first == RewardModelScorer(tmp_path).version
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    assert model_dir_version(tmp_path) != first
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        model_dir_version(empty)


def _server_answering(status: int) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return http, f"http://127.0.0.1:{http.server_address[1]}"


@pytest.mark.parametrize(("status", "transient"), [(503, True), (429, True), (400, False), (404, False)])
def test_a_server_error_is_transient_only_when_a_retry_may_help(status: int, transient: bool) -> None:
    http, url = _server_answering(status)
    try:
        with pytest.raises(RuntimeError, match=f"HTTP {status}") as raised:
            OpenAIServerGenerator(url, "m", "v1").generate([[{"role": "user", "content": "hi"}]], SamplingSpec(n=1))
    finally:
        http.shutdown()
    assert isinstance(raised.value, TransientEngineError) is transient


def test_a_server_that_is_not_there_is_a_transient_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(TransientEngineError, match="chat completion failed"):
        OpenAIServerGenerator(f"http://127.0.0.1:{port}", "m", "v1", timeout=5).generate(
            [[{"role": "user", "content": "hi"}]], SamplingSpec(n=1))
