"""Units of work of the hard-case loop: sample hard cases, generate candidate groups, select from them.

Each reads the store, calls the pure core (sampling.hardcases, sampling.selection) or a generator port,
and appends its result to the log as events; re-running after a crash appends only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import psycopg

from flywheel.settings import Settings
from sampling.generation import Generator, SamplingSpec
from sampling.hardcases import SampledHardCases, SamplerConfig, sample
from sampling.selection import ScoredCandidate, Selection, SelectionConfig, length_bias, score_group, select
from sampling.verifiers import Scorer
from store.candidates import generated_event, selected_event, unselected
from store.hardcases import load_sample, prompt_candidates, record_sample
from store.projections import record
from store.signals import checkpoint

Progress = Callable[[int], None]  # called with how many items were just done


def make_generator(settings: Settings) -> Generator:
    """The configured generator: an OpenAI-compatible vLLM server (FLYWHEEL_GENERATOR_URL) or an
    in-process vLLM engine on a local model directory (FLYWHEEL_GENERATOR_MODEL)."""
    from sampling.adapters.openai_server import OpenAIServerGenerator
    from sampling.adapters.vllm import VLLMGenerator

    if settings.generator_url:
        return OpenAIServerGenerator(settings.generator_url, settings.generator_model,
                                     settings.generator_model_version)
    if not settings.generator_model:
        raise ValueError("set FLYWHEEL_GENERATOR_MODEL (a local model directory) or FLYWHEEL_GENERATOR_URL "
                         "(an OpenAI-compatible vLLM server)")
    return VLLMGenerator(settings.generator_model, settings.generator_model_version)


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleOutcome:
    sample_id: str
    new: bool  # False: this exact sample (config, seed, watermark) was already recorded
    result: SampledHardCases


async def sample_hard_cases(
    conn: psycopg.AsyncConnection, config: SamplerConfig, *, watermark: int | None = None,
    quarantined: frozenset[str] = frozenset(),
) -> SampleOutcome:
    """Choose hard cases as the log stood at `watermark` (default: as far as signals are derived) and
    record them as one HardCasesSampled event."""
    derived = await checkpoint(conn)
    if watermark is None:
        watermark = derived
    elif watermark > derived:
        raise ValueError(f"watermark {watermark} is past the signals projector ({derived}): wait or lower it")
    async with conn.transaction():
        candidates, prompts = await prompt_candidates(conn, watermark)
        result = sample(candidates, config, watermark=watermark, quarantined=quarantined)
        sample_id, new = await record_sample(conn, result, config, prompts)
    return SampleOutcome(sample_id=sample_id, new=new, result=result)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateOutcome:
    sample_id: str
    prompts: int
    groups_new: int
    candidates: int
    completion_tokens: int


async def generate_candidates(
    conn: psycopg.AsyncConnection, generator: Generator, spec: SamplingSpec, *, sample_id: str | None = None,
    batch: int = 16, progress: Progress | None = None,
) -> GenerateOutcome:
    """Generate spec.n candidates for every hard case of a sample (default: the newest) that has no group
    from this generator and spec yet; each batch of prompts is one engine call and one transaction."""
    sampled = await load_sample(conn, sample_id)
    if sampled is None:
        raise LookupError(f"no hard-case sample {sample_id}" if sample_id else "no hard-case sample recorded yet")
    chosen = sampled.data["payload"]["chosen"]
    cur = await conn.execute("SELECT prompt_key FROM candidate_groups WHERE sample_id = %s::uuid AND generator = %s"
                             " AND model_version = %s AND sampling @> %s::jsonb",
                             [sampled.event_id, generator.name, generator.model_version,
                              orjson.dumps(spec.to_payload()).decode()])
    done = {row[0] for row in await cur.fetchall()}
    # Hard case number r of the sample is always sampled with spec.prompt_seed(r), however the work is batched
    # or resumed.
    todo = [(rank, case) for rank, case in enumerate(chosen) if case["prompt_key"] not in done]
    batches = [todo[start:start + batch] for start in range(0, len(todo), batch)]
    new = candidates = tokens = 0
    for cases in batches:
        groups = generator.generate([c["messages"] for _, c in cases], spec,
                                    [spec.prompt_seed(rank) for rank, _ in cases])
        payloads = [g.to_event_payload() for g in groups]
        stored = await record(conn, [generated_event(sampled.event_id, c, p)
                                     for (_, c), p in zip(cases, payloads, strict=True)])
        new += len(stored)
        candidates += sum(len(p["candidates"]) for p in payloads)
        tokens += sum(p["completion_tokens"] for p in payloads)
        if progress:
            progress(len(cases))
    return GenerateOutcome(sample_id=sampled.event_id, prompts=len(chosen), groups_new=new, candidates=candidates,
                           completion_tokens=tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class SelectOutcome:
    groups: int
    sft_samples: int
    pairs: int
    reasons: dict[str, int]
    length_bias: dict[str, Any]
    not_judged: int = 0  # groups no configured scorer (or not the deciding one) applies to: left unselected


def selector_version(scorers: Sequence[Scorer], config: SelectionConfig) -> str:
    """Which scorers (name and version) and thresholds judged a group: part of the selection's identity."""
    return orjson.dumps({"scorers": sorted(f"{s.name}@{s.version}" for s in scorers), "config": asdict(config)},
                        option=orjson.OPT_SORT_KEYS).decode()


def selection_payload(selection: Selection) -> dict[str, Any]:
    return {
        "scores": [{"index": c.index, "scores": [asdict(s) for s in c.scores]} for c in selection.candidates],
        "sft": None if selection.sft is None else asdict(selection.sft),
        "pair": None if selection.pair is None else asdict(selection.pair),
        "margin": selection.margin,
        "best_index": selection.best_index,
        "worst_index": selection.worst_index,
        "reasons": list(selection.reasons),
    }


async def select_candidates(
    conn: psycopg.AsyncConnection, scorers: Sequence[Scorer], config: SelectionConfig, *,
    sample_id: str | None = None, progress: Progress | None = None,
    scorers_for: Callable[[list[dict[str, Any]]], Sequence[Scorer]] | None = None,
) -> SelectOutcome:
    """Score every candidate group without a selection, apply RSFT and best-vs-worst selection, and
    record one CandidatesSelected event per group (the full scored group stays for RM/GRPO use).
    `scorers_for(prompt)`: more scorers for one group (the verifiers of a checkable prompt). A group that
    no scorer applies to (or not the deciding one) is not judged, so a later run with other scorers can."""
    selections: list[Selection] = []
    not_judged = 0
    for group in await unselected(conn, sample_id):
        group_scorers = [*scorers, *(scorers_for(group["prompt"]) if scorers_for else ())]
        names = {s.name for s in group_scorers}
        if not names or (config.scorer is not None and config.scorer not in names):
            not_judged += 1
            if progress:
                progress(1)
            continue
        scored: tuple[ScoredCandidate, ...] = score_group(group_scorers, group["prompt"],
                                                          [c["text"] for c in group["candidates"]])
        selection = select(group["prompt"], scored, config)
        version = selector_version(group_scorers, config)
        await record(conn, [selected_event(group["group_id"], version, selection_payload(selection))])
        selections.append(selection)
        if progress:
            progress(1)
    reasons: dict[str, int] = {}
    for s in selections:
        for r in s.reasons:
            reasons[r] = reasons.get(r, 0) + 1
    return SelectOutcome(groups=len(selections), sft_samples=sum(s.sft is not None for s in selections),
                         pairs=sum(s.pair is not None for s in selections), reasons=reasons,
                         length_bias=asdict(length_bias(selections)), not_judged=not_judged)
