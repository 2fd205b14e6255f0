"""The `flywheel` command: one console script, human output by default, --json for scripts."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from flywheel.bootstrap import NoStack, resolve
from flywheel.settings import Endpoints, Settings

app = typer.Typer(help="Flywheel: feedback events in, round-tagged training datasets out.", no_args_is_help=True)
stack_app = typer.Typer(help="The embedded local stack (PostgreSQL + Kafka-protocol broker).", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _settings() -> Settings:
    return Settings()


def _endpoints(settings: Settings, *, start: bool = False) -> Endpoints:
    try:
        return resolve(settings, start=start)
    except NoStack as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _prepare(settings: Settings, endpoints: Endpoints) -> dict[str, int]:
    """Schema and topics; returns each topic's partition count."""
    from store.db import create_schema
    from streams.topics import ensure_topics

    create_schema(endpoints.database_url)
    return ensure_topics(endpoints.kafka_bootstrap, settings)


def _print(data: Any, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else human)


# ---- stack ----


@stack_app.command("up")
def stack_up() -> None:
    """Start the local stack in the background (idempotent) and print its environment."""
    from infra.stack import LocalStack

    settings = _settings()
    env = LocalStack(settings.stack_dir).up()
    _prepare(settings, Endpoints(env.database_url, env.kafka_bootstrap, embedded=True))
    typer.echo("\n".join(env.lines()))


@stack_app.command("down")
def stack_down(purge: bool = typer.Option(False, help="Also delete the local data directory.")) -> None:
    """Stop the local stack (after letting running workers drain what the broker holds)."""
    from infra.stack import LocalStack

    settings = _settings()
    stack = LocalStack(settings.stack_dir)
    env = stack.env()
    if env is not None and not settings.database_url:
        endpoints = Endpoints(env.database_url, env.kafka_bootstrap, embedded=True)
        _say_unread(settings, endpoints, _drain(settings, endpoints, patience=3.0))  # while some worker reads
    stack.purge() if purge else stack.down()
    typer.echo("local stack stopped" + (" and deleted" if purge else ""))


@stack_app.command("env")
def stack_env() -> None:
    """Print FLYWHEEL_DATABASE_URL=… and FLYWHEEL_KAFKA_BOOTSTRAP=… of the running local stack."""
    from infra.stack import LocalStack

    env = LocalStack(_settings().stack_dir).env()
    if env is None:
        typer.echo("error: the local stack is not running (flywheel stack up)", err=True)
        raise typer.Exit(2)
    typer.echo("\n".join(env.lines()))


# ---- processes ----


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))  # its connections' chatter


@app.command()
def worker(loglevel: str = typer.Option("info", help="crit|error|warn|info|debug")) -> None:
    """Run the ingest worker (a Faust app). Start more to scale out: same consumer group."""
    import mode.loop

    mode.loop.use("uvloop")  # before Faust creates its loop: uvloop roughly halves asyncio's per-message cost
    from faust.worker import Worker

    from flywheel.runtime.collect import collect_rarely
    from streams.app import create_app
    from streams.metrics import Metrics

    settings = _settings()
    endpoints = _endpoints(settings)
    partitions = _prepare(settings, endpoints)
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    faust_app = create_app(settings, endpoints, metrics, partitions=partitions.get(settings.feedback_topic))
    collect_rarely()
    Worker(faust_app, loglevel=loglevel, quiet=True).execute_from_commandline()


@app.command()
def scheduler() -> None:
    """Run the scheduler in the foreground (jobs persist in Postgres)."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    from flywheel.entrypoints.scheduler import configure

    _logging("info")
    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    configure(BlockingScheduler(), settings, endpoints).start()


@app.command()
def up() -> None:
    """Local stack + ingest worker + scheduler in the foreground; Ctrl-C stops everything cleanly."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from flywheel.entrypoints.scheduler import configure

    _logging("info")
    settings = _settings()
    endpoints = _endpoints(settings, start=True)
    _prepare(settings, endpoints)
    typer.echo(f"database {endpoints.database_url}\nbroker   {endpoints.kafka_bootstrap}")
    from flywheel.runtime.child import die_with_parent

    # A session of its own: Ctrl-C reaches this process alone, which lets the worker drain before stopping it.
    worker_proc = subprocess.Popen([sys.executable, "-m", "flywheel", "worker"], start_new_session=True,
                                   preexec_fn=die_with_parent)
    sched = configure(BackgroundScheduler(), settings, endpoints)
    sched.start()
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    code = 0
    try:
        while not stop["now"]:
            if worker_proc.poll() is not None:
                typer.echo(f"error: the worker exited with code {worker_proc.returncode}", err=True)
                code = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping…")
        sched.shutdown(wait=False)
        if endpoints.embedded:
            _say_unread(settings, endpoints, _drain(settings, endpoints, reading=lambda: worker_proc.poll() is None))
        if worker_proc.poll() is None:
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        if endpoints.embedded:
            from infra.stack import LocalStack

            LocalStack(settings.stack_dir).down()
    raise typer.Exit(code)


def _unread(settings: Settings, endpoints: Endpoints) -> Callable[[], int]:
    """A count of the messages on the feedback topic that the consumer group has not read."""
    from store.db import connect_sync
    from store.tracking import tracked
    from streams.lag import unread
    from streams.topics import ensure_topics

    partitions = ensure_topics(endpoints.kafka_bootstrap, settings)[settings.feedback_topic]

    def count() -> int:
        with connect_sync(endpoints.database_url) as conn:
            rows = tracked(conn, settings.consumer_group, settings.feedback_topic)
        return sum(unread(endpoints.kafka_bootstrap, settings.feedback_topic, partitions, rows).values())

    return count


def _drain(settings: Settings, endpoints: Endpoints, *, reading: Callable[[], bool] = lambda: True,
           patience: float | None = None) -> int | None:
    """Let the worker read what the broker holds, for at most FLYWHEEL_DRAIN_SECONDS (streams.lag.drain); None:
    the broker or store could not say."""
    from streams.lag import drain

    try:
        left = _unread(settings, endpoints)
        first = left()
        if first:
            typer.echo(f"draining: {first} messages on the broker not yet ingested "
                       f"(at most {settings.drain_seconds:g}s)…")
        return drain(left, seconds=settings.drain_seconds, still_reading=reading, patience=patience)
    except Exception as e:  # the stack may be half down already: say so, and stop anyway
        typer.echo(f"warning: could not count the unread messages ({type(e).__name__}: {e})", err=True)
        return None


def _say_unread(settings: Settings, endpoints: Endpoints, left: int | None) -> None:
    if left == 0:
        typer.echo("drained: every message on the broker is ingested")
    elif left:
        typer.echo(f"warning: {left} messages were left unread on {settings.feedback_topic}: the local broker keeps "
                   "messages in memory only, so they are lost when it stops", err=True)


# ---- traffic and inspection ----


@app.command()
def simulate(
    events: int = typer.Option(1000, "--events", "-n", help="How many messages to send."),
    seed: int = typer.Option(0, help="Same seed, same traffic."),
    bad_fraction: float = typer.Option(0.05, help="Share of malformed messages, sent raw."),
    panel_fraction: float = typer.Option(0.04, help="Share of interactions also judged by a panel of other users."),
    start: str = typer.Option("now", help="Event time of the first event (RFC 3339, or 'now'): a second run "
                                          "continues after the first, as real traffic does."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send realistic synthetic production traffic through FeedbackClient."""
    from datetime import UTC, datetime

    from flywheel.client import FeedbackClient
    from flywheel.simulator import Summary, generate

    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    sent = []
    client = FeedbackClient(endpoints.kafka_bootstrap, topic=settings.feedback_topic,
                            max_event_bytes=settings.max_event_bytes, spill_dir=settings.home / "spill")
    try:
        stream = generate(events, seed=seed, bad_fraction=bad_fraction, panel_fraction=panel_fraction,
                          max_event_bytes=settings.max_event_bytes,
                          start=datetime.now(UTC) if start == "now" else datetime.fromisoformat(start))
        with typer.progressbar(stream, length=events, label="sending", file=sys.stderr) as bar:
            for sim in bar:
                if sim.event is not None:
                    client.send(sim.event)
                else:
                    client.send_raw(sim.key, sim.value)
                sent.append(sim)
    finally:
        delivered = client.close(timeout=120)
    if delivered.delivered < len(sent):
        typer.echo(f"warning: {delivered.delivered} of {len(sent)} messages delivered; {delivered.spilled} spilled to "
                   f"{client.spill_dir} (sent by the next client there), {delivered.dropped} dropped", err=True)
    summary = Summary.of(sent)
    _print(summary.as_dict(), as_json, summary.describe())


def _query_store(query: Callable[[Any], dict[str, Any]]) -> tuple[dict[str, Any], Endpoints]:
    """Run a read-only report against the store the settings point at."""
    from store.db import connect_sync, create_schema

    endpoints = _endpoints(_settings())
    create_schema(endpoints.database_url)
    with connect_sync(endpoints.database_url) as conn:
        return query(conn), endpoints


@app.command()
def stats(as_json: bool = typer.Option(False, "--json")) -> None:
    """Events stored by type, dead-lettered by reason, read-model counts, consumer lag."""
    from store.stats import store_stats
    from streams.lag import with_lag

    data, endpoints = _query_store(store_stats)
    data["consumers"] = with_lag(endpoints.kafka_bootstrap, data["consumers"])
    _print(data, as_json, _describe_stats(data))


def _describe_stats(d: dict[str, Any]) -> str:
    lines = [f"events stored      {d['events']['total']:>9}   (head position {d['events']['head_position']})"]
    lines += [f"  {k:<16} {v:>9}" for k, v in d["events"]["by_type"].items()]
    lines.append(f"dead-lettered      {d['dead_lettered']['total']:>9}")
    lines += [f"  {k:<16} {v:>9}" for k, v in d["dead_lettered"]["by_reason"].items()]
    lines.append(f"parked (waiting)   {d['parked']:>9}")
    lines.append("read models")
    lines += [f"  {k:<16} {v:>9}" for k, v in d["read_models"].items()]
    lines.append(f"signals behind     {d['signals_behind']:>9} events")
    lines.append("consumers")
    for c in d["consumers"]:
        lag = "n/a" if c.get("lag") is None else c["lag"]
        lines.append(f"  {c['consumer_group']} {c['topic']}[{c['partition']}] offset {c['offset']} lag {lag}")
    return "\n".join(lines)


@app.command()
def signals(as_json: bool = typer.Option(False, "--json")) -> None:
    """Derived preference data: counts by rule, rater agreement, length and position bias."""
    from store.stats import signal_report

    report = _in_store(signal_report)
    _print(report, as_json, _describe_signals(report))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _describe_signals(r: dict[str, Any]) -> str:
    lines = ["signals by rule                      count  disagree  no-consent"]
    for c in r["signals"]:
        name = f"{c['kind']}/{c['rule']}" + (f" [{c['status']}]" if c["status"] else "")
        lines.append(f"  {name:<33}{c['count']:>7}{c['disagreement']:>10}{c['no_consent']:>12}")
    lines.append("feedback per 100 responses          responses  up  down  edits  regens  ratings  comparisons")
    for version, f in r["feedback_rates"].items():
        lines.append(f"  {version:<33}{f['interactions']:>10}{f['thumbs_up']:>4.0f}{f['thumbs_down']:>6.0f}"
                     f"{f['edits']:>7.0f}{f['regenerations']:>8.0f}{f['ratings']:>9.0f}{f['comparisons']:>13.0f}")
    for kind, by in r["agreement"].items():
        for key, groups in by.items():
            lines.append(f"agreement on {kind} by {key}")
            for group, a in groups.items():
                figures = []
                for name in ("cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
                    f = a[name]
                    figures.append(f"{name} {_fmt(f['value'])} ({f['band']})" if f else f"{name} n/a")
                lines.append(f"  {group:<22} items {a['items']:>5}  " + "  ".join(figures))
    lb, pb = r["length_bias"], r["position_bias"]
    lines.append(f"length bias      longer response chosen in {_fmt(lb['chosen_longer_rate'])} of {lb['pairs']} "
                 f"pairs, r(length diff, margin) = {_fmt(lb['correlation'])}")
    lines.append(f"position bias    first-shown wins {_fmt(pb['first_shown_win_rate'])} of {pb['comparisons']} "
                 f"comparisons (p = {_fmt(pb['p_value'], 3)}), ties {pb['ties']}")
    return "\n".join(lines)


@app.command()
def replay(check: bool = typer.Option(False, "--check", help="Rebuild into scratch tables and compare.")) -> None:
    """Rebuild every read model from the event log (--check: verify without touching the live ones)."""
    from store.db import connect, create_schema
    from store.projections import check as check_projections
    from store.projections import rebuild

    settings = _settings()
    endpoints = _endpoints(settings)
    create_schema(endpoints.database_url)

    async def run() -> int:
        conn = await connect(endpoints.database_url)
        try:
            if not check:
                n = await rebuild(conn)
                typer.echo(f"rebuilt read models from {n} events")
                return 0
            drifts = await check_projections(conn)
        finally:
            await conn.close()
        for d in drifts:
            state = "ok" if not (d.missing or d.extra) else f"DRIFT: {d.missing} missing, {d.extra} extra"
            typer.echo(f"{d.table:<14} {state}")
        return 1 if any(d.missing or d.extra for d in drifts) else 0

    raise typer.Exit(asyncio.run(run()))


# ---- hard cases, generation, selection ----


def _in_store(work: Callable[[Any], Any]) -> Any:
    """Run an async unit of work on one store connection."""
    from store.db import connect, create_schema

    endpoints = _endpoints(_settings())
    create_schema(endpoints.database_url)

    async def run() -> Any:
        conn = await connect(endpoints.database_url, autocommit=True)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@app.command()
def sample(
    budget: int = typer.Option(100, help="How many hard cases at most."),
    seed: int = typer.Option(0, help="Breaks ties between equal scores (with the watermark)."),
    watermark: int = typer.Option(None, help="Event-log position to sample at (default: as far as signals go)."),
    max_cluster_share: float = typer.Option(0.05, help="Largest share of the budget one near-duplicate cluster gets."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Choose hard cases from the read models and record them as a HardCasesSampled event."""
    from flywheel.services.generation import sample_hard_cases
    from sampling.hardcases import SamplerConfig

    config = SamplerConfig(budget=budget, seed=seed, max_cluster_share=max_cluster_share)
    out = _in_store(lambda conn: sample_hard_cases(conn, config, watermark=watermark))
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
    from flywheel.services.generation import make_generator

    try:
        return make_generator(settings)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
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
    from flywheel.services.generation import generate_candidates
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

            out = _in_store(lambda conn: generate_candidates(conn, generator, spec, sample_id=sample_id,
                                                             progress=advance))
    finally:
        generator.unload()
    data = {"sample_id": out.sample_id, "prompts": out.prompts, "groups_new": out.groups_new,
            "candidates": out.candidates, "completion_tokens": out.completion_tokens}
    _print(data, as_json, f"sample {out.sample_id}: {out.groups_new} new candidate groups for {out.prompts} hard "
                          f"cases, {out.candidates} candidates, {out.completion_tokens} completion tokens")


def _send_generation_requests(settings: Settings, spec: Any, sample_id: str | None) -> dict[str, Any]:
    from kafka import KafkaProducer

    from store.hardcases import load_sample
    from streams.generation import request

    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    sampled = _in_store(lambda conn: load_sample(conn, sample_id))
    if sampled is None:
        typer.echo("error: no hard-case sample recorded yet (flywheel sample)", err=True)
        raise typer.Exit(1)
    producer = KafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap, acks="all", enable_idempotence=False)
    try:
        chosen = sampled.data["payload"]["chosen"]
        for rank, case in enumerate(chosen):
            producer.send(settings.generation_topic, key=case["prompt_key"].encode(),
                          value=request(sampled.event_id, rank, case, spec))
        producer.flush()
    finally:
        producer.close()
    return {"sample_id": sampled.event_id, "requests": len(chosen)}


@app.command("generation-worker")
def generation_worker(loglevel: str = typer.Option("info", help="crit|error|warn|info|debug")) -> None:
    """Run a generation worker: one engine, requests from the generation topic. Start more to scale out."""
    import mode.loop

    mode.loop.use("uvloop")
    from faust.worker import Worker

    from flywheel.services.generation import make_generator
    from streams.generation import create_generation_app

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


@app.command("select")
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
    from flywheel.services.generation import select_candidates

    with typer.progressbar(length=1, label="selecting", file=sys.stderr) as bar:
        def advance(k: int) -> None:
            bar.length = max(bar.length or 0, bar.pos + k)
            bar.update(k)

        return _in_store(lambda conn: select_candidates(conn, scorers, config, sample_id=sample_id,
                                                        progress=advance, scorers_for=checks.for_prompt))


# ---- quarantine and rounds (on-call) ----

quarantine_app = typer.Typer(help="Benchmark and eval items no round may contain.", no_args_is_help=True)
rounds_app = typer.Typer(help="Round-tagged datasets: build, inspect, roll back.", no_args_is_help=True)
tracking_app = typer.Typer(help="Where ingest resumes on each partition (the store's offsets).", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(rounds_app, name="rounds")
app.add_typer(tracking_app, name="tracking")


def _operator(by: str | None) -> str:
    """Who is acting: --by, else FLYWHEEL_OPERATOR, else the OS user."""
    import getpass
    import os

    return by or os.environ.get("FLYWHEEL_OPERATOR") or getpass.getuser()


@tracking_app.command("reset")
def tracking_reset(
    topic: str = typer.Option(..., "--topic", help="The topic, e.g. flywheel.feedback."),
    partition: int = typer.Option(..., "--partition", min=0),
    to: str = typer.Option(..., "--to", help="start: read the partition again from its start (events already stored"
                                            " are dropped by their event id); end: skip what it holds now."),
    group: str = typer.Option(None, "--group", help="Consumer group (default FLYWHEEL_CONSUMER_GROUP)."),
    by: str = typer.Option(None, "--by", help="Who decided (default FLYWHEEL_OPERATOR, else the OS user)."),
    reason: str = typer.Option("", "--reason", help="Why, for the log."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Move a partition's stored offset, after a worker stopped because the log no longer reaches it. Stop the
    partition's workers first; the reset is an event in the log."""
    from store.tracking import reset
    from streams.lag import next_offsets
    from streams.topics import log_ends, topic_id

    if to not in ("start", "end"):
        typer.echo(f"error: --to takes start or end, not {to!r}", err=True)
        raise typer.Exit(2)
    settings = _settings()
    endpoints = _endpoints(settings)
    group = group or settings.consumer_group
    incarnation = topic_id(endpoints.kafka_bootstrap, topic)
    if incarnation is None:
        typer.echo(f"error: the broker has no topic {topic!r}", err=True)
        raise typer.Exit(1)
    offset = -1
    if to == "end":
        from store.db import connect_sync
        from store.tracking import tracked

        with connect_sync(endpoints.database_url) as conn:
            rows = [r for r in tracked(conn, group, topic) if r["partition"] == partition]
        near = next_offsets(rows, incarnation, partition + 1)[partition]
        offset = log_ends(endpoints.kafka_bootstrap, topic, {partition: near})[partition] - 1
    done = _in_store(lambda conn: reset(conn, group, topic, partition, offset, topic_id=incarnation,
                                        by=_operator(by), note=reason))
    data = {"consumer_group": group, "topic": topic, "partition": partition, "previous_offset": done.previous,
            "offset": done.offset, "topic_id": incarnation}
    _print(data, as_json, f"{group} {topic}[{partition}]: offset {done.previous} -> {done.offset} "
                          f"(next read: {done.offset + 1}); recorded in the log")


def _read_items(path: Path) -> list[tuple[str, str]]:
    items = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) \
                or not isinstance(obj.get("answer", ""), str) or not obj["prompt"].strip():
            raise ValueError(f"{path}:{n}: need an object with a non-empty string 'prompt' and a string 'answer'")
        items.append((obj["prompt"], obj.get("answer", "")))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


@quarantine_app.command("add")
def quarantine_add(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL: {prompt, answer} per line."),
    name: str = typer.Option(..., "--name", help="The list's name, e.g. the benchmark."),
) -> None:
    """Add benchmark/eval items to the quarantine list (an event; every later round is checked against it)."""
    from store.projections import record
    from store.rounds import quarantine_added

    try:
        items = _read_items(file)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    stored = _in_store(lambda conn: record(conn, [quarantine_added(name, items)]))
    typer.echo(f"{len(items)} items {'added to' if stored else 'already in'} quarantine list {name!r}")


@quarantine_app.command("list")
def quarantine_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Quarantine lists, their item counts, the version rounds record, and active rollback slices."""
    from store.rounds import quarantine

    version, items, slices = _in_store(quarantine)
    lists: dict[str, int] = {}
    for _, list_name, _, _ in items:
        lists[list_name] = lists.get(list_name, 0) + 1
    data = {"version": version, "lists": lists, "slices": slices}
    human = [f"quarantine version {version}"] + [f"  {k:<24} {v:>7} items" for k, v in sorted(lists.items())]
    human += [f"  slice from rollback of round {sl['round']}: "
              + ", ".join(f"{k}={v}" for k, v in sl.items() if k != "round") for sl in slices]
    _print(data, as_json, "\n".join(human))


@quarantine_app.command("show")
def quarantine_show(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """The items of one quarantine list."""
    from store.rounds import quarantine

    _, items, _ = _in_store(quarantine)
    rows = [{"item_id": i, "prompt": p, "answer": a} for i, n, p, a in items if n == name]
    if not rows:
        typer.echo(f"error: no quarantine list {name!r}", err=True)
        raise typer.Exit(1)
    _print(rows, as_json, "\n".join(f"{r['item_id']}  {r['prompt'][:60]!r} -> {r['answer'][:30]!r}" for r in rows))


def _announcer(settings: Settings) -> Callable[[dict[str, Any]], None]:
    from flywheel.services.rollback import kafka_announcer

    return kafka_announcer(_endpoints(settings).kafka_bootstrap, settings.rounds_topic)


def _describe_round(r: dict[str, Any]) -> str:
    state = f"ROLLED BACK ({r['rollback_reason']})" if r["rolled_back"] else "published"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r["summary"].get("rows", {}).items()))
    return (f"round {r['number']:>4}  {state}  watermark {r['watermark']}  parent {r['parent']}  "
            f"hash {r['content_hash'][:12]}  {counts}\n            {r['path']}"
            + (f"\n            consumed by {', '.join(r['consumed_by'])}" if r["consumed_by"] else ""))


@rounds_app.command("build")
def rounds_build(
    watermark: int = typer.Option(
        None, help="Event-log position to cut at (default: the head of the log, once signals are derived to it)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Cut the next round from the log: gates, splits, files, manifests, report; published atomically."""
    from flywheel.domain.rounds import RoundConfig
    from flywheel.services.build_round import BuilderBusy, build_round

    settings = _settings()
    started = time.perf_counter()
    try:
        out = _in_store(lambda conn: build_round(conn, settings.rounds_root, RoundConfig(), watermark=watermark,
                                                 announce=_announcer(settings)))
    except (BuilderBusy, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    data = {"round": out.round, "path": str(out.path), "content_hash": out.content_hash,
            "watermark": out.watermark, "rows_in": out.rows_in, "rows_out": out.rows_out,
            "sliced_out": out.sliced_out, "seconds": round(time.perf_counter() - started, 3)}
    _print(data, as_json, f"round {out.round} published at {out.path}\n  watermark {out.watermark}, "
                          f"{out.rows_out} of {out.rows_in} rows kept ({out.sliced_out} in rolled-back slices), "
                          f"content hash {out.content_hash[:16]}")


@rounds_app.command("list")
def rounds_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every round, newest last, with its state, and the run history of the nightly pipeline (failed runs
    with their error)."""
    from store.rounds import nightly_runs, rounds

    async def both(conn: Any) -> dict[str, Any]:
        return {"rounds": await rounds(conn), "nightly_runs": await nightly_runs(conn)}

    data = _in_store(both)
    human = "\n".join(_describe_round(r) for r in data["rounds"]) or "no rounds yet"
    if data["nightly_runs"]:
        human += "\nnightly runs (newest last)\n" + "\n".join(_describe_run(r) for r in data["nightly_runs"])
    _print(data, as_json, human)


def _describe_run(r: dict[str, Any]) -> str:
    steps = "; ".join(f"{k}: {v}" for k, v in r["steps"].items())
    return (f"  {r['started_at'][:19]}  {r['status'].upper():<6}  {steps or 'no step ran'}"
            + (f"\n      error: {r['error']}" if r["error"] else ""))


@rounds_app.command("show")
def rounds_show(number: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """One round and its manifest."""
    from store.rounds import round_by_number

    r = _in_store(lambda conn: round_by_number(conn, number))
    if r is None:
        typer.echo(f"error: no round {number}", err=True)
        raise typer.Exit(1)
    manifest_path = Path(r["path"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    _print({**r, "manifest": manifest}, as_json,
           _describe_round(r) + ("" if manifest else "\n            (manifest file missing)"))


@rounds_app.command("diff")
def rounds_diff(a: int = typer.Argument(...), b: int = typer.Argument(...),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """What changed between two rounds: rows per kind and split, sources, gate removals."""
    from store.rounds import round_by_number

    found = _in_store(lambda conn: asyncio.gather(round_by_number(conn, a), round_by_number(conn, b)))
    missing = [n for n, r in zip((a, b), found, strict=True) if r is None]
    if missing:
        typer.echo(f"error: no round {missing[0]}", err=True)
        raise typer.Exit(1)
    diff = _summary_diff(found[0]["summary"], found[1]["summary"])
    _print({"a": a, "b": b, "changes": diff}, as_json,
           "\n".join(f"{k:<40} {va!s:>10} -> {vb!s:<10}" for k, (va, vb) in diff.items()) or "no differences")


def _summary_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(_summary_diff(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out[f"{prefix}{key}"] = (va, vb)
    return out


@rounds_app.command("current")
def rounds_current() -> None:
    """The current round's directory (the newest one not rolled back)."""
    from store.rounds import current_round

    r = _in_store(current_round)
    if r is None:
        typer.echo("error: no current round", err=True)
        raise typer.Exit(1)
    typer.echo(r["path"])


@rounds_app.command("rollback")
def rounds_rollback(
    number: int = typer.Argument(...),
    reason: str = typer.Option(..., "--reason", help="Why: goes into the log and the marker file."),
    quarantine_slice: list[str] = typer.Option(
        [], "--quarantine", help="Exclude this slice from every later build: app_id=, model_version=, "
                                 "prompt_version=, since=, until= (repeat to combine)."),
) -> None:
    """Roll a round back: RoundRolledBack event, `current` moves to the newest good round, announced."""
    from flywheel.services.rollback import parse_slice, rollback

    settings = _settings()
    try:
        filters = parse_slice(quarantine_slice)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        out = _in_store(lambda conn: rollback(conn, settings.rounds_root, number, reason=reason,
                                              quarantine=filters, announce=_announcer(settings)))
    except LookupError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"round {number} {'rolled back' if out.changed else 'was already rolled back'}; "
               f"current round: {out.current if out.current is not None else 'none'}")


@rounds_app.command("restore")
def rounds_restore(number: int = typer.Argument(...)) -> None:
    """Undo a rollback."""
    from flywheel.services.rollback import restore

    settings = _settings()
    try:
        out = _in_store(lambda conn: restore(conn, settings.rounds_root, number, announce=_announcer(settings)))
    except LookupError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"round {number} {'restored' if out.changed else 'was not rolled back'}; "
               f"current round: {out.current if out.current is not None else 'none'}")


@rounds_app.command("consume")
def rounds_consume(number: int = typer.Argument(...), run: str = typer.Option(..., "--run", help="Training run id.")
                   ) -> None:
    """Record that a training run used a round (its training-consumption manifest)."""
    from flywheel.services.rollback import consume

    settings = _settings()
    try:
        new = _in_store(lambda conn: consume(conn, settings.rounds_root, number, run))
    except LookupError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"round {number}: run {run} {'recorded' if new else 'was already recorded'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
