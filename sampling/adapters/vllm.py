"""The in-process vLLM engine behind the generator port (vllm is imported when the engine loads)."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sampling.generation import (
    Candidate,
    CandidateGroup,
    GenerationTiming,
    Messages,
    SamplingSpec,
    chat_messages,
    prompt_seeds,
)

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams


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
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            seed=seed,
            logprobs=spec.logprobs,
            structured_outputs=(None if spec.output_pattern is None
                                else StructuredOutputsParams(regex=spec.output_pattern)),
        )

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        if self._llm is None:
            raise RuntimeError("VLLMGenerator.generate before load()")
        started = time.perf_counter()
        conversations = [chat_messages(p) for p in prompts]
        if not conversations:
            self.last_timing = GenerationTiming(total_seconds=0.0, engine_seconds=0.0)
            return []
        seed_of = prompt_seeds(spec, len(conversations), seeds)
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
