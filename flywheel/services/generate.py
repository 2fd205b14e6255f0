"""GenerateCandidates: spec.n candidates for every hard case of a sample, from the generator port."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.domain.events import CandidatesGenerated
from flywheel.ports import HardCaseStore, Progress
from sampling.generation import Generator, SamplingSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateOutcome:
    sample_id: str
    prompts: int
    groups_new: int
    candidates: int
    completion_tokens: int


async def generate_candidates(
    store: HardCaseStore, generator: Generator, spec: SamplingSpec, *, sample_id: str | None = None,
    batch: int = 16, progress: Progress | None = None,
) -> GenerateOutcome:
    """Generate spec.n candidates for every hard case of a sample (default: the newest) that has no group
    from this generator and spec yet; each batch of prompts is one engine call and one transaction. Re-running
    after a crash appends only what is missing."""
    sampled = await store.sample(sample_id)
    if sampled is None:
        raise LookupError(f"no hard-case sample {sample_id}" if sample_id else "no hard-case sample recorded yet")
    done = await store.generated(sampled.event_id, generator.name, generator.model_version, spec.to_payload())
    # Hard case number r of the sample is always sampled with spec.prompt_seed(r), however the work is batched
    # or resumed.
    live = sampled.cases()
    todo = [(rank, case) for rank, case in live if case["prompt_key"] not in done]
    batches = [todo[start:start + batch] for start in range(0, len(todo), batch)]
    new = candidates = tokens = 0
    for cases in batches:
        groups = generator.generate([c["messages"] for _, c in cases], spec,
                                    [spec.prompt_seed(rank) for rank, _ in cases])
        payloads = [g.to_event_payload() for g in groups]
        stored = await store.record([CandidatesGenerated.for_case(sampled.event_id, c, p)
                                     for (_, c), p in zip(cases, payloads, strict=True)])
        new += len(stored)
        candidates += sum(len(p["candidates"]) for p in payloads)
        tokens += sum(p["completion_tokens"] for p in payloads)
        if progress:
            progress(len(cases))
    return GenerateOutcome(sample_id=sampled.event_id, prompts=len(live), groups_new=new, candidates=candidates,
                           completion_tokens=tokens)
