"""A vLLM OpenAI-compatible server behind the generator port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sampling.generation import (
    Candidate,
    CandidateGroup,
    Messages,
    SamplingSpec,
    TransientEngineError,
    chat_messages,
    prompt_seeds,
)

# What a server says while it is overloaded, starting or restarting, or behind a proxy that lost it: try again later.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class OpenAIServerGenerator:
    """A vLLM OpenAI-compatible server: one `/v1/chat/completions` request with `n` per prompt.

    Uses vLLM's `return_token_ids` extension for per-candidate token counts (the OpenAI `usage` only sums them), and
    its `structured_outputs` extension for a spec's `output_pattern`.
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
            "messages": [dict(m) for m in chat_messages(messages)],
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
        if spec.output_pattern is not None:
            body["structured_outputs"] = {"regex": spec.output_pattern}
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
            error = TransientEngineError if e.code in TRANSIENT_STATUS else RuntimeError
            raise error(f"chat completion failed: HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # unreachable, refused, reset, timed out
            raise TransientEngineError(f"chat completion failed: {getattr(e, 'reason', e)}") from e

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        """The prompts' requests are in flight together, so the server batches them as the in-process engine does."""
        seed_of = prompt_seeds(spec, len(prompts), seeds)
        bodies = [self.request_body(messages, spec, seed_of[i]) for i, messages in enumerate(prompts)]
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(bodies)))) as pool:
            results = list(pool.map(self._post, bodies))
        return [
            self._group(chat_messages(messages), result, spec, seed_of[i])
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
