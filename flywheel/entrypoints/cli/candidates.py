"""Hard cases, candidates and selection: sample, generate, generation-worker, select."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flywheel.entrypoints.cli.common import _endpoints, _in_store, _prepare, _print, _settings, fail, failing
from flywheel.entrypoints.cli.progress import progress
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
    round_config = _settings().round_config()
    with progress("sampling hard cases", unit="prompt candidates read") as shown:
        out = _in_store(lambda conn: sample_hard_cases(hard_cases(conn), config, watermark=watermark,
                                                       round_config=round_config, progress=shown))
    r = out.result
    data = {"sample_id": out.sample_id, "new": out.new, "watermark": r.watermark, "chosen": len(r.chosen),
            "clusters": r.clusters, "excluded": r.excluded_counts, "config_version": r.config_version,
            "quarantine": {"version": out.quarantine_version, "contaminated_prompts": out.contaminated,
                           "items": out.contaminated_items, "sliced_interactions": out.sliced},
            "cases": [{"prompt_key": c.prompt_key, "app_id": c.app_id, "model_version": c.model_version,
                       "cluster_id": c.cluster_id, "score": round(c.score.total, 4)} for c in r.chosen]}
    human = [f"sample {out.sample_id} at watermark {r.watermark}{'' if out.new else ' (already recorded)'}",
             f"chosen {len(r.chosen)} of budget {budget} from {r.clusters} near-duplicate clusters",
             "excluded " + ", ".join(f"{k} {v}" for k, v in r.excluded_counts.items()),
             f"quarantine {out.quarantine_version or '(empty)'}: {out.contaminated} prompts hold a quarantine item, "
             f"{out.sliced} interactions lie in rolled-back slices (both left out)"]
    _print(data, as_json, "\n".join(human))


def _generator(settings: Settings) -> Any:
    from flywheel.bootstrap import make_generator

    with failing(ValueError, code=2):
        generator = make_generator(settings)
    return generator


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
        with progress("generating", unit="prompts") as shown:
            out = _in_store(lambda conn: generate_candidates(hard_cases(conn), generator, spec, sample_id=sample_id,
                                                             progress=shown))
    finally:
        generator.unload()
    data = {"sample_id": out.sample_id, "prompts": out.prompts, "groups_new": out.groups_new,
            "candidates": out.candidates, "completion_tokens": out.completion_tokens}
    _print(data, as_json, f"sample {out.sample_id}: {out.groups_new} new candidate groups for {out.prompts} hard "
                          f"cases, {out.candidates} candidates, {out.completion_tokens} completion tokens")


def _send_generation_requests(settings: Settings, spec: Any, sample_id: str | None) -> dict[str, Any]:
    from flywheel.bootstrap import hard_cases
    from streams.generation_worker import request
    from streams.topics import producer as kafka_producer

    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    sampled = _in_store(lambda conn: hard_cases(conn).sample(sample_id))
    if sampled is None:
        fail("no hard-case sample recorded yet (flywheel sample)")
    producer = kafka_producer(endpoints.kafka_bootstrap, settings.kafka_security())
    try:
        chosen = sampled.cases()
        for rank, case in chosen:
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
    from flywheel.bootstrap import make_generator
    from flywheel.entrypoints.cli.run import run_faust
    from streams.generation_worker import create_generation_app
    from streams.metrics import GenerationMetrics

    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    _generator(settings)  # fail now, with a clear error, when no model is configured
    metrics = GenerationMetrics()
    if settings.generation_metrics_port:
        metrics.serve(settings.generation_metrics_port)
    faust_app = create_generation_app(settings, endpoints, lambda: make_generator(settings), metrics=metrics)
    run_faust(faust_app, loglevel, f"generation worker ready: serving {settings.generation_topic} as consumer group "
                                   f"{settings.generation_group}")


def select_cmd(
    min_margin: float = typer.Option(None, help="Smallest best-vs-worst margin that makes a DPO pair, on the "
                                     "deciding scorer's scale (default FLYWHEEL_SELECT_MIN_MARGIN, 0.2)."),
    sft_threshold: float = typer.Option(None, help="Smallest best-of-n value that makes an SFT sample, on the "
                                        "deciding scorer's scale (default FLYWHEEL_SELECT_SFT_THRESHOLD, 0.8)."),
    verify_json: bool = typer.Option(False, "--verify-json", help="Also score with the JSON format verifier."),
    checks_file: Path = typer.Option(None, "--checks", help="JSONL of checkable prompts: {prompt, answer"
                                     "[, tolerance]} or {prompt, tests[, timeout_s]} (sampling/adapters/checks.py); "
                                     "default FLYWHEEL_SELECT_CHECKS."),
    judge_rubric: Path = typer.Option(None, "--judge-rubric", help="Also grade with the LLM judge "
                                      "(FLYWHEEL_JUDGE_MODEL / FLYWHEEL_JUDGE_URL) under this rubric (a text "
                                      "file); default FLYWHEEL_JUDGE_RUBRIC."),
    judge_may_be_policy: bool = typer.Option(False, "--judge-may-be-policy", help="Let the judge grade candidates "
                                             "its own model generated (refused by default)."),
    decide_by: str = typer.Option(None, "--decide-by", help="The scorer on whose scale the thresholds are "
                                  "(needed when scorers on several scales judge a group), e.g. numeric_answer, "
                                  "llm_judge or reward_model; default FLYWHEEL_SELECT_DECIDE_BY."),
    sample_id: str = typer.Option(None, "--sample", help="Only groups of this sample."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score unselected candidate groups; RSFT best-of-n and best-vs-worst pairs, recorded as events.
    Scorers: the reward model (FLYWHEEL_REWARD_MODEL), --verify-json, the judge (--judge-rubric), and the
    verifiers of --checks for the groups whose prompt a check names. Best and worst are picked by rank within
    the group over all scorers; a failed check vetoes a candidate; thresholds are on the deciding scorer's scale."""
    from flywheel.bootstrap import scoring

    overrides: dict[str, Any] = {"select_min_margin": min_margin, "select_sft_threshold": sft_threshold,
                                 "select_checks": checks_file and str(checks_file),
                                 "judge_rubric": judge_rubric and str(judge_rubric), "select_decide_by": decide_by,
                                 "judge_may_be_policy": judge_may_be_policy or None}
    settings = _settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    with failing(OSError, ValueError, code=2):
        plan = scoring(settings, verify_json=verify_json)
    if not plan.names:
        fail("no scorer: set FLYWHEEL_REWARD_MODEL, or pass --verify-json, --judge-rubric or --checks", 2)
    decider = plan.config.scorer
    if decider is not None and decider not in plan.names:
        fail(f"--decide-by {decider}: no such scorer configured (have: {', '.join(sorted(plan.names))})", 2)
    # a group no threshold can be read for, or a judge grading its own model's answers
    with failing(ValueError, code=2):
        out = _select(plan, sample_id)
    data = {"groups": out.groups, "sft_samples": out.sft_samples, "pairs": out.pairs, "reasons": out.reasons,
            "length_bias": out.length_bias, "not_judged": out.not_judged, "audit": out.audit}
    audit = ""
    if out.audit:
        accuracy = ", ".join(f"{k} {v:.2f}" for k, v in out.audit["probe_accuracy"].items()) or "none"
        flagged = ", ".join(out.audit["flagged"]) or "none"
        audit = (f"\nusers' pairs scored: {out.audit['pairs_scored']}; bias-probe accuracy: {accuracy}; "
                 f"flagged: {flagged}")
    _print(data, as_json, f"{out.groups} groups: {out.sft_samples} SFT samples, {out.pairs} DPO pairs; "
                          f"not selected: {out.reasons or 'none'}; left for other scorers: {out.not_judged}{audit}")


def _select(plan: Any, sample_id: str | None) -> Any:
    from flywheel.bootstrap import hard_cases
    from flywheel.services.select import select_candidates

    with progress("selecting", unit="candidate groups") as shown:
        return _in_store(lambda conn: select_candidates(hard_cases(conn), plan, sample_id=sample_id,
                                                        progress=shown))
