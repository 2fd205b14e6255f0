"""Multi-candidate generation: sampling spec, candidate groups and the generator port (adapters: sampling.adapters)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Messages = Sequence[Mapping[str, Any]]


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
    # A regular expression every completion must match, enforced by the engine while it samples (vLLM's
    # structured output), as a judge's grade is; None: free text.
    output_pattern: str | None = None

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
        if self.output_pattern is not None:
            try:
                re.compile(self.output_pattern)
            except re.error as e:
                raise ValueError(f"output_pattern is not a regular expression: {e}") from None

    def prompt_seed(self, index: int) -> int:
        """The seed of the request for the `index`-th prompt of a batch."""
        return self.seed + index * self.n

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "logprobs": self.logprobs,
        }
        if self.output_pattern is not None:  # absent otherwise: the groups recorded before it keep their payloads
            payload["output_pattern"] = self.output_pattern
        return payload


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


class TransientEngineError(RuntimeError):
    """The engine could not answer now (overloaded, restarting, unreachable): the same call may succeed later, so a
    caller retries it before giving up. Any other error of `generate` is about the request and is not retried."""


def retry_delays(retries: int, first: float, *, factor: float = 2.0, most: float = 60.0) -> list[float]:
    """Seconds to wait before each retry: exponential backoff from `first`, each wait at most `most`."""
    return [min(most, first * factor**k) for k in range(retries)]


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


def prompt_seeds(spec: SamplingSpec, count: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return [spec.prompt_seed(i) for i in range(count)]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} prompts")
    return list(seeds)


def chat_messages(messages: Messages) -> tuple[dict[str, Any], ...]:
    """The conversation as the engine's chat API takes it: role and content (text, or text parts as sent), and
    an assistant turn's tool calls or a tool turn's call id where the conversation has them."""
    return tuple(_chat_message(m) for m in messages)


def _chat_message(m: Mapping[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    message: dict[str, Any] = {"role": str(m["role"]),
                               "content": content if isinstance(content, list) or content is None else str(content)}
    for field in ("tool_calls", "tool_call_id"):
        if m.get(field) is not None:
            message[field] = m[field]
    return message


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationTiming:
    """Wall time of one `generate` call and the part of it spent inside the engine call."""

    total_seconds: float
    engine_seconds: float

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.total_seconds - self.engine_seconds)
