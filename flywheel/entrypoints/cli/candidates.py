"""Hard cases, candidates and selection: sample, generate, generation-worker, select."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from flywheel.entrypoints.cli.common import _endpoints, _in_store, _prepare, _print, _settings
from flywheel.settings import Settings


def sample(
    budget: int = typer.Option(100, help="How many hard cases at most."),
    seed: int = typer.Option(0, help="Breaks ties between equal scores (with the watermark)."),
    watermark: int = typer.Option(None, help="Event-log position to sample at (default: as far as signals go)."),
    max_cluster_share: float = typer.Option(0.05, help="Largest share of the budget one near-duplicate cluster gets."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Choose hard cases from the read models and record them as a HardCasesSampled event."""
    from flywheel.bootstrap import hard_cases
    from flywheel.services.sample import sample_hard_cases
    from sampling.hardcases import SamplerConfig

    config = SamplerConfig(budget=budget, seed=seed, max_cluster_share=max_cluster_share)
    out = _in_store(lambda conn: sample_hard_cases(hard_cases(conn), config, watermark=watermark))
    r = out.result
    data = {"sample_id": out.sample_id, "new": out.new, "watermark": r.watermark, "chosen": len(r.chosen),
            "clusters": r.clusters, "excluded": r.excluded_counts, "config_version": r.config_version,
            "cases": [{"prompt_key": c.prompt_key, "app_id": c.app_id, "model_version": c.model_version,
                       "cluster_id": c.cluster_id, "score": round(c.score.total, 4)} for c in r.chosen]}
    human = [f"sample {out.sample_id} at watermark {r.watermark}{'' if out.new else ' (already recorded)'}",
             f"chosen {len(r.chosen)} of budget {budget} from {r.clusters} near-duplicate clusters",
             "excluded " + ", ".join(f"{k} {v}" for k, v in r.excluded_counts.items())]
    _print(data, as_json, "\n".join(human))


def _generator(settings: Settings) -> Any:
    from flywheel.bootstrap import make_generator

    try:
        return make_generator(settings)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def generate(
    n: int = typer.Option(4, "-n", help="Candidates per prompt (one request with n, not n requests)."),
    temperature: float = typer.Option(1.0),
    top_p: float = typer.Option(1.0),
    max_tokens: int = typer.Option(128),
    seed: int = typer.Option(0),
    sample_id: str = typer.Option(None, "--sample", help="A HardCasesSampled event id (default: the newest)."),
    via_kafka: bool = typer.Option(False, "--via-kafka", help="Send the requests to the generation workers "
                                                              "(flywheel generation-worker) instead."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Generate a candidate group for every hard case of a sample, with vLLM; each group is an event."""
    from flywheel.bootstrap import hard_cases
    from flywheel.services.generate import generate_candidates
    from sampling.generation import SamplingSpec

    settings = _settings()
    spec = SamplingSpec(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    if via_kafka:
        sent = _send_generation_requests(settings, spec, sample_id)
        _print(sent, as_json, f"sample {sent['sample_id']}: {sent['requests']} generation requests sent to "
                              f"{settings.generation_topic}")
        return
    generator = _generator(settings)
    generator.load()
    try:
        with typer.progressbar(length=1, label="generating", file=sys.stderr) as bar:
            def advance(k: int) -> None:
                bar.length = max(bar.length or 0, bar.pos + k)
                bar.update(k)

            out = _in_store(lambda conn: generate_candidates(hard_cases(conn), generator, spec, sample_id=sample_id,
                                                             progress=advance))
    finally:
        generator.unload()
    data = {"sample_id": out.sample_id, "prompts": out.prompts, "groups_new": out.groups_new,
            "candidates": out.candidates, "completion_tokens": out.completion_tokens}
    _print(data, as_json, f"sample {out.sample_id}: {out.groups_new} new candidate groups for {out.prompts} hard "
                          f"cases, {out.candidates} candidates, {out.completion_tokens} completion tokens")


def _send_generation_requests(settings: Settings, spec: Any, sample_id: str | None) -> dict[str, Any]:
    from kafka import KafkaProducer

    from flywheel.bootstrap import hard_cases
    from streams.generation_worker import request

    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    sampled = _in_store(lambda conn: hard_cases(conn).sample(sample_id))
    if sampled is None:
        typer.echo("error: no hard-case sample recorded yet (flywheel sample)", err=True)
        raise typer.Exit(1)
    producer = KafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap, acks="all", enable_idempotence=False)
    try:
        chosen = sampled.chosen
        for rank, case in enumerate(chosen):
            producer.send(settings.generation_topic, key=case["prompt_key"].encode(),
                          value=request(sampled.event_id, rank, case, spec))
        producer.flush()
    finally:
        producer.close()
    return {"sample_id": sampled.event_id, "requests": len(chosen)}


def generation_worker(loglevel: str = typer.Option("info", help="crit|error|warn|info|debug")) -> None:
    """Run a generation worker: one engine, requests from the generation topic. Start more to scale out."""
    import mode.loop

    mode.loop.use("uvloop")
    from faust.worker import Worker

    from flywheel.bootstrap import make_generator
    from streams.generation_worker import create_generation_app

    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    _generator(settings)  # fail now, with a clear error, when no model is configured
    faust_app = create_generation_app(settings, endpoints, lambda: make_generator(settings))
    Worker(faust_app, loglevel=loglevel, quiet=True).execute_from_commandline()


def _scorers(settings: Settings, *, verify_json: bool) -> list[Any]:
    from sampling.verifiers import JsonFormatVerifier

    scorers: list[Any] = []
    if settings.reward_model:
        from sampling.adapters.reward_model import RewardModelScorer

        scorers.append(RewardModelScorer(settings.reward_model))
    if verify_json:
        scorers.append(JsonFormatVerifier())
    return scorers


def _judge(settings: Settings, rubric_file: Path | None) -> Any:
    """An LLM judge through the configured generator (FLYWHEEL_GENERATOR_URL or _MODEL), or None."""
    if rubric_file is None:
        return None
    from sampling.generation import SamplingSpec
    from sampling.judge import JudgeScorer

    try:
        rubric = rubric_file.read_text(encoding="utf-8")
    except OSError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not rubric.strip():
        typer.echo(f"error: {rubric_file}: the rubric is empty", err=True)
        raise typer.Exit(2)
    # Greedy and short: a grade is one line; the judge model's version is part of the scorer's.
    return JudgeScorer(_generator(settings), rubric, SamplingSpec(n=1, temperature=0.0, max_tokens=24, seed=0),
                       version=f"1+{settings.generator_model_version}")


def _checks(path: Path | None) -> Any:
    from sampling.adapters.checks import Checks, load_checks

    if path is None:
        return Checks()
    try:
        return load_checks(path)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def select_cmd(
    min_margin: float = typer.Option(0.2, help="Smallest best-vs-worst margin that makes a DPO pair."),
    sft_threshold: float = typer.Option(0.8, help="Smallest best-of-n score that makes an SFT sample."),
    verify_json: bool = typer.Option(False, "--verify-json", help="Also score with the JSON format verifier."),
    checks_file: Path = typer.Option(None, "--checks", help="JSONL of checkable prompts: {prompt, answer"
                                     "[, tolerance]} or {prompt, tests[, timeout_s]} (sampling/adapters/checks.py)."),
    judge_rubric: Path = typer.Option(None, "--judge-rubric", help="Also grade with an LLM judge under this "
                                      "rubric (a text file), through the configured generator."),
    decide_by: str = typer.Option(None, "--decide-by", help="The scorer whose value decides (default: the "
                                  "mean of a candidate's scores), e.g. numeric_answer or reward_model."),
    sample_id: str = typer.Option(None, "--sample", help="Only groups of this sample."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score unselected candidate groups; RSFT best-of-n and best-vs-worst pairs, recorded as events.
    Scorers: the reward model (FLYWHEEL_REWARD_MODEL), --verify-json, --judge-rubric, and the verifiers
    of --checks for the groups whose prompt a check names."""
    from sampling.selection import SelectionConfig

    settings = _settings()
    config = SelectionConfig(sft_threshold=sft_threshold, min_margin=min_margin,
                             length_guard_margin=max(min_margin, 0.4), scorer=decide_by)
    scorers = _scorers(settings, verify_json=verify_json)
    checks = _checks(checks_file)
    judge = _judge(settings, judge_rubric)
    if judge is not None:
        scorers.append(judge)
    if not scorers and not checks.by_prompt:
        typer.echo("error: no scorer: set FLYWHEEL_REWARD_MODEL, or pass --verify-json, --judge-rubric or "
                   "--checks", err=True)
        raise typer.Exit(2)
    names = {s.name for s in scorers} | {v.name for vs in checks.by_prompt.values() for v in vs}
    if decide_by is not None and decide_by not in names:
        typer.echo(f"error: --decide-by {decide_by}: no such scorer configured (have: {', '.join(sorted(names))})",
                   err=True)
        raise typer.Exit(2)
    if judge is not None:
        judge.generator.load()
    try:
        out = _select(scorers, config, sample_id, checks)
    finally:
        if judge is not None:
            judge.generator.unload()
    data = {"groups": out.groups, "sft_samples": out.sft_samples, "pairs": out.pairs, "reasons": out.reasons,
            "length_bias": out.length_bias, "not_judged": out.not_judged}
    _print(data, as_json, f"{out.groups} groups: {out.sft_samples} SFT samples, {out.pairs} DPO pairs; "
                          f"not selected: {out.reasons or 'none'}; left for other scorers: {out.not_judged}")


def _select(scorers: list[Any], config: Any, sample_id: str | None, checks: Any) -> Any:
    from flywheel.bootstrap import hard_cases
    from flywheel.services.select import select_candidates

    with typer.progressbar(length=1, label="selecting", file=sys.stderr) as bar:
        def advance(k: int) -> None:
            bar.length = max(bar.length or 0, bar.pos + k)
            bar.update(k)

        return _in_store(lambda conn: select_candidates(hard_cases(conn), scorers, config, sample_id=sample_id,
                                                        progress=advance, scorers_for=checks.for_prompt))
