"""Multi-candidate generation: sampling spec, candidate groups, the generator port and its vLLM adapters."""

from __future__ import annotations

import gc
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams

Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingSpec:
    """How to sample `n` candidates for each prompt.

    `seed` is the base of a batch: prompt `i` is sampled with `prompt_seed(i)` and its candidate `j` with
    `prompt_seed(i) + j` (how vLLM seeds the children of an n>1 request), so no two candidates of one batch share
    a seed, and a group is reproducible from the seed recorded in its payload alone.
    """

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    logprobs: int | None = None  # top-k logprobs per token; None: no logprobs, cumulative_logprob may stay None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError("n must be an integer >= 1")
        if not self.temperature >= 0.0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError("max_tokens must be an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError("seed must be an integer >= 0")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or self.logprobs < 0):
            raise ValueError("logprobs must be None or an integer >= 0")

    def prompt_seed(self, index: int) -> int:
        """The seed of the request for the `index`-th prompt of a batch."""
        return self.seed + index * self.n

    def to_payload(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "logprobs": self.logprobs,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One sampled completion."""

    text: str
    token_count: int
    cumulative_logprob: float | None
    finish_reason: str | None  # "stop" (end of turn or stop string) or "length" (hit max_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateGroup:
    """All candidates sampled for one prompt in one request, with what is needed to reproduce them."""

    prompt: tuple[Mapping[str, str], ...]
    candidates: tuple[Candidate, ...]
    spec: SamplingSpec
    seed: int  # the request's seed; candidate j was sampled with seed + j
    model_version: str
    prompt_tokens: int | None
    generator: str

    @property
    def completion_tokens(self) -> int:
        return sum(c.token_count for c in self.candidates)

    def to_event_payload(self) -> dict[str, Any]:
        """A JSON-able dict for a `CandidatesGenerated` event."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "candidates": [
                {
                    "index": i,
                    "text": c.text,
                    "token_count": c.token_count,
                    "cumulative_logprob": c.cumulative_logprob,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(self.candidates)
            ],
            "sampling": self.spec.to_payload(),
            "seed": self.seed,
            "model_version": self.model_version,
            "generator": self.generator,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@runtime_checkable
class Generator(Protocol):
    """Samples `spec.n` candidates for each prompt: one engine request per prompt, never `n` requests."""

    @property
    def name(self) -> str: ...

    @property
    def model_version(self) -> str:
        """The version recorded on every candidate group (and part of its identity)."""
        ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        """One group per prompt, in prompt order; prompt `i` is sampled with `seeds[i]` when given, else
        `spec.prompt_seed(i)`."""
        ...


def _seeds(spec: SamplingSpec, count: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return [spec.prompt_seed(i) for i in range(count)]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} prompts")
    return list(seeds)


def _prompt(messages: Messages) -> tuple[dict[str, str], ...]:
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationTiming:
    """Wall time of one `generate` call and the part of it spent inside the engine call."""

    total_seconds: float
    engine_seconds: float

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.total_seconds - self.engine_seconds)


class VLLMGenerator:
    """In-process vLLM engine; all prompts of a call go to one `LLM.chat` call with one `n`-sample request each.

    On CPU, `gpu_memory_utilization` is the share of RAM the worker may use; `kv_cache_memory_bytes` sets the
    KV cache size directly (and skips that RAM check). `enforce_eager` skips torch.compile, which on a small CPU
    costs more start-up time than it saves.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        model_version: str,
        *,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int = 512,
        dtype: str = "float32",
        enforce_eager: bool = True,
        kv_cache_memory_bytes: int | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.model_version = model_version
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.engine_kwargs = dict(engine_kwargs or {})
        self.last_timing: GenerationTiming | None = None
        self._llm: LLM | None = None

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def load(self) -> None:
        if self._llm is not None:
            return
        from vllm import LLM

        options: dict[str, Any] = {
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
            **self.engine_kwargs,
        }
        self._llm = LLM(model=str(self.model_path), **options)

    def unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()

    def __enter__(self) -> VLLMGenerator:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload()

    def sampling_params(self, spec: SamplingSpec, seed: int) -> SamplingParams:
        from vllm import SamplingParams

        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            seed=seed,
            logprobs=spec.logprobs,
        )

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        if self._llm is None:
            raise RuntimeError("VLLMGenerator.generate before load()")
        started = time.perf_counter()
        conversations = [_prompt(p) for p in prompts]
        if not conversations:
            self.last_timing = GenerationTiming(total_seconds=0.0, engine_seconds=0.0)
            return []
        seed_of = _seeds(spec, len(conversations), seeds)
        params = [self.sampling_params(spec, seed_of[i]) for i in range(len(conversations))]
        messages: Any = [list(c) for c in conversations]
        engine_started = time.perf_counter()
        outputs = self._llm.chat(messages, params, use_tqdm=False)
        engine_seconds = time.perf_counter() - engine_started
        groups = [
            self._group(conversation, output, spec, seed_of[i])
            for i, (conversation, output) in enumerate(zip(conversations, outputs, strict=True))
        ]
        self.last_timing = GenerationTiming(
            total_seconds=time.perf_counter() - started, engine_seconds=engine_seconds
        )
        return groups

    def _group(
        self, prompt: tuple[dict[str, str], ...], output: RequestOutput, spec: SamplingSpec, seed: int
    ) -> CandidateGroup:
        candidates = tuple(
            Candidate(
                text=o.text,
                token_count=len(o.token_ids),
                cumulative_logprob=o.cumulative_logprob,
                finish_reason=o.finish_reason,
            )
            for o in sorted(output.outputs, key=lambda o: o.index)
        )
        return CandidateGroup(
            prompt=prompt,
            candidates=candidates,
            spec=spec,
            seed=seed,
            model_version=self.model_version,
            prompt_tokens=len(output.prompt_token_ids) if output.prompt_token_ids is not None else None,
            generator=self.name,
        )


class OpenAIServerGenerator:
    """A vLLM OpenAI-compatible server: one `/v1/chat/completions` request with `n` per prompt.

    Uses vLLM's `return_token_ids` extension for per-candidate token counts (the OpenAI `usage` only sums them).
    """

    name = "vllm-openai"

    def __init__(
        self, base_url: str, model: str, model_version: str, *, timeout: float = 600.0, max_concurrency: int = 8
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.model_version = model_version
        self.timeout = timeout
        self.max_concurrency = max_concurrency

    def load(self) -> None:
        """Fails unless the server answers and serves `model`."""
        with urllib.request.urlopen(f"{self.base_url}/v1/models", timeout=self.timeout) as response:
            served = [m["id"] for m in json.load(response)["data"]]
        if self.model not in served:
            raise RuntimeError(f"model {self.model!r} is not served at {self.base_url} (serves {served})")

    def unload(self) -> None:
        """The server's lifetime is not ours."""

    def request_body(self, messages: Messages, spec: SamplingSpec, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in _prompt(messages)],
            "n": spec.n,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_tokens": spec.max_tokens,
            "seed": seed,
            "return_token_ids": True,
        }
        if spec.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = spec.logprobs
        return body

    def _post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.base_url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                result: dict[str, Any] = json.load(response)
                return result
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise RuntimeError(f"chat completion failed: HTTP {e.code}: {detail}") from e

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        """The prompts' requests are in flight together, so the server batches them as the in-process engine does."""
        seed_of = _seeds(spec, len(prompts), seeds)
        bodies = [self.request_body(messages, spec, seed_of[i]) for i, messages in enumerate(prompts)]
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(bodies)))) as pool:
            results = list(pool.map(self._post, bodies))
        return [
            self._group(_prompt(messages), result, spec, seed_of[i])
            for i, (messages, result) in enumerate(zip(prompts, results, strict=True))
        ]

    def _group(
        self, prompt: tuple[dict[str, str], ...], result: Mapping[str, Any], spec: SamplingSpec, seed: int
    ) -> CandidateGroup:
        candidates = []
        for choice in sorted(result["choices"], key=lambda c: c["index"]):
            token_ids = choice.get("token_ids")
            content = (choice.get("logprobs") or {}).get("content")
            if token_ids is not None:
                token_count = len(token_ids)
            elif content is not None:
                token_count = len(content)
            else:
                token_count = 0
            candidates.append(
                Candidate(
                    text=choice["message"].get("content") or "",
                    token_count=token_count,
                    cumulative_logprob=sum(t["logprob"] for t in content) if content else None,
                    finish_reason=choice.get("finish_reason"),
                )
            )
        prompt_token_ids = result.get("prompt_token_ids")
        usage = result.get("usage") or {}
        return CandidateGroup(
            prompt=prompt,
            candidates=tuple(candidates),
            spec=spec,
            seed=seed,
            model_version=self.model_version,
            prompt_tokens=len(prompt_token_ids) if prompt_token_ids is not None else usage.get("prompt_tokens"),
            generator=self.name,
        )
