"""The wiring: settings → endpoints → adapters → services. The only module that knows them all."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.settings import Endpoints, Settings

# Only what a command needs is imported, when it needs it: every CLI command imports this module.
if TYPE_CHECKING:
    import psycopg

    from flywheel.domain.commands import (
        BuildRound,
        PromoteRound,
        PurgeRound,
        RecutRound,
        RegisterConsumption,
        RestoreRound,
        RollBackRound,
    )
    from flywheel.domain.signals import SignalConfig
    from flywheel.ports import Announcer, Embedder, EventLog, HardCaseStore, Progress, RoundBuilder
    from flywheel.services.build_round import Published
    from flywheel.services.recut import Recut
    from flywheel.services.rollback import Change
    from flywheel.services.select import Scoring
    from sampling.generation import Generator
    from sampling.judge import JudgeScorer


class NoStack(RuntimeError):
    pass


def resolve(settings: Settings, *, start: bool = False) -> Endpoints:
    """Explicit URLs win; otherwise the local stack under FLYWHEEL_HOME (started when `start`)."""
    if settings.database_url and settings.kafka_bootstrap:
        return Endpoints(settings.database_url, settings.kafka_bootstrap)
    from infra.stack import LocalStack

    stack = LocalStack(settings.stack_dir)
    env = stack.up() if start else stack.env()
    if env is None:
        raise NoStack(
            f"no local stack is running under {settings.stack_dir}: run `flywheel stack up`, "
            "or set FLYWHEEL_DATABASE_URL and FLYWHEEL_KAFKA_BOOTSTRAP"
        )
    return Endpoints(
        settings.database_url or env.database_url, settings.kafka_bootstrap or env.kafka_bootstrap, embedded=True
    )


class Build(Protocol):
    """BuildRound, told of the rows as it reads them."""

    def __call__(self, command: BuildRound, *, progress: Progress | None = None) -> Awaitable[Published]: ...


@dataclass(frozen=True, slots=True)
class RoundOps:
    """The rounds' use cases with their adapters bound in (one store connection, the rounds directory)."""

    build: Build
    rollback: Callable[[RollBackRound], Awaitable[Change]]
    restore: Callable[[RestoreRound], Awaitable[Change]]
    register_consumption: Callable[[RegisterConsumption], Awaitable[bool]]
    promote: Callable[[PromoteRound], Awaitable[Change]]
    recut: Callable[[RecutRound], Awaitable[Recut]]
    purge: Callable[[PurgeRound], Awaitable[int]]
    # Embed the texts a build would check (the semantic check); None where the embedder is not installed.
    embed: Callable[[BuildRound], Awaitable[int]] | None = None


def announcer(settings: Settings, endpoints: Endpoints) -> Announcer:
    """Round changes announced on the rounds topic."""
    from streams.announcer import KafkaAnnouncer

    return KafkaAnnouncer(endpoints.kafka_bootstrap, settings.rounds_topic, settings.kafka_security())


def make_embedder() -> Embedder | None:
    """The semantic check's embedder where its package is installed (the generation virtualenv), else None: a build
    then compares the embeddings kept already and stops on a text without one."""
    from sampling.adapters.embedder import MiniLMEmbedder, available

    return MiniLMEmbedder() if available() else None


def rounds_wiring(root: Path, *, announce: Announcer | None = None, builder: RoundBuilder | None = None,
                  signals: SignalConfig | None = None) -> Callable[[psycopg.AsyncConnection], RoundOps]:
    """The rounds' use cases, ready to bind to a store connection (in autocommit): round directories under `root`,
    the builder in a process of its own; without `announce`, changes are not announced. `signals`: the rules the
    signals read model is derived with (FLYWHEEL_SIGNALS; default: the default rules). Everything a build needs
    is imported here, before any connection is made. The semantic check's embeddings are kept in the same
    database; its embedder is used where installed (`make_embedder`)."""
    from flywheel.domain.signals import SignalConfig
    from flywheel.runtime.round_builder import ProcessRoundBuilder
    from flywheel.services.build_round import build_round, embed_round_texts
    from flywheel.services.recut import purge, recut
    from flywheel.services.rollback import promote, register_consumption, restore, rollback
    from store.db import conninfo
    from store.embeddings import PostgresTextEmbeddings
    from store.roundfiles import RoundDirectories
    from store.roundsource import PostgresRoundSource
    from store.unit_of_work import PostgresRounds
    from streams.announcer import Silent

    files, told, rules = RoundDirectories(root), announce or Silent(), signals or SignalConfig()
    embedder = make_embedder()

    def bind(conn: psycopg.AsyncConnection) -> RoundOps:
        rounds = PostgresRounds(conn)
        source, embeddings = PostgresRoundSource(conn, rules), PostgresTextEmbeddings(conninfo(conn))
        build = partial(build_round, source=source, builder=builder or ProcessRoundBuilder(), files=files,
                        announce=told, embeddings=embeddings, embedder=embedder)
        return RoundOps(
            build=build,
            embed=None if embedder is None else partial(embed_round_texts, source, embeddings, embedder),
            recut=partial(recut, build=build, rounds=rounds, files=files, announce=told),
            purge=partial(purge, rounds=rounds, files=files, announce=told),
            rollback=partial(rollback, rounds=rounds, files=files, announce=told),
            restore=partial(restore, rounds=rounds, files=files, announce=told),
            register_consumption=partial(register_consumption, rounds=rounds, files=files),
            promote=partial(promote, rounds=rounds, files=files, announce=told),
        )

    return bind


def round_ops(conn: psycopg.AsyncConnection, root: Path, *, announce: Announcer | None = None,
              builder: RoundBuilder | None = None, signals: SignalConfig | None = None) -> RoundOps:
    """rounds_wiring bound to `conn` at once."""
    return rounds_wiring(root, announce=announce, builder=builder, signals=signals)(conn)


def make_generator(settings: Settings) -> Generator:
    """The configured generator: an OpenAI-compatible vLLM server (FLYWHEEL_GENERATOR_URL) or an
    in-process vLLM engine on a local model directory (FLYWHEEL_GENERATOR_MODEL)."""
    if not settings.generator_url and not settings.generator_model:
        raise ValueError("set FLYWHEEL_GENERATOR_MODEL (a local model directory) or FLYWHEEL_GENERATOR_URL "
                         "(an OpenAI-compatible vLLM server)")
    return _engine(settings.generator_url, settings.generator_model, settings.generator_model_version)


def _engine(url: str, model: str, version: str) -> Generator:
    from sampling.adapters.openai_server import OpenAIServerGenerator
    from sampling.adapters.vllm import VLLMGenerator

    return OpenAIServerGenerator(url, model, version) if url else VLLMGenerator(model, version)


def make_judge(settings: Settings, rubric: str) -> JudgeScorer:
    """The LLM judge of FLYWHEEL_JUDGE_MODEL (a local model directory, or with FLYWHEEL_JUDGE_URL the name a vLLM
    server serves it under), grading under `rubric` with structured output. Refused (JudgeIsPolicy) when it is
    the configured policy, unless FLYWHEEL_JUDGE_MAY_BE_POLICY."""
    from flywheel.services.select import JudgeIsPolicy
    from sampling.adapters.reward_model import model_dir_version
    from sampling.generation import SamplingSpec
    from sampling.judge import JudgeScorer, judgement_max_tokens, judgement_pattern

    if not settings.judge_model:
        raise ValueError("set FLYWHEEL_JUDGE_MODEL (a local model directory, or the model a server at "
                         "FLYWHEEL_JUDGE_URL serves) for the judge")
    if not rubric.strip():
        raise ValueError("the judge's rubric is empty")
    version = settings.judge_model_version or (
        settings.judge_model if settings.judge_url else model_dir_version(Path(settings.judge_model)))
    if not settings.judge_may_be_policy and (why := _judge_is_policy(settings, version)):
        raise JudgeIsPolicy(f"the judge is the policy that generates the candidates ({why}): a model grading its own "
                            "answers favours them. Configure another judge, or allow it with "
                            "FLYWHEEL_JUDGE_MAY_BE_POLICY=true (select --judge-may-be-policy)")
    chars = settings.judge_rationale_chars
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=judgement_max_tokens(chars), seed=0,
                        output_pattern=judgement_pattern(chars))
    return JudgeScorer(_engine(settings.judge_url, settings.judge_model, version), rubric, spec,
                       model=settings.judge_model, model_version=version)


def _judge_is_policy(settings: Settings, judge_version: str) -> str | None:
    """How the configured judge is the configured policy, or None."""
    from sampling.adapters.reward_model import model_dir_version

    if settings.judge_url or settings.generator_url:
        same_server = settings.judge_url.rstrip("/") == settings.generator_url.rstrip("/")
        if same_server and settings.judge_model == settings.generator_model:
            return f"{settings.judge_model} at {settings.judge_url}"
    elif settings.generator_model:
        judge, policy = Path(settings.judge_model).resolve(), Path(settings.generator_model).resolve()
        if judge == policy:
            return f"both are {judge}"
        try:
            if model_dir_version(policy) == model_dir_version(judge):
                return f"{judge} and {policy} hold the same model files"
        except FileNotFoundError:  # no model files to compare: the paths and versions still are
            pass
    configured = settings.generator_url or settings.generator_model
    if configured and judge_version == settings.generator_model_version:
        return f"both are version {judge_version}"
    return None


def scoring(settings: Settings, *, verify_json: bool = False) -> Scoring:
    """What `select` judges with, from the settings: the reward model (FLYWHEEL_REWARD_MODEL), the JSON verifier
    (`verify_json`), the judge (FLYWHEEL_JUDGE_RUBRIC and FLYWHEEL_JUDGE_MODEL), the verifiers of the checks file
    (FLYWHEEL_SELECT_CHECKS), the thresholds (FLYWHEEL_SELECT_*) and the scorers' audit (FLYWHEEL_SCORER_AUDIT,
    FLYWHEEL_PROBE_MIN_ACCURACY). Raises ValueError (OSError for a file that
    cannot be read) on a bad configuration."""
    from flywheel.services.audit_scorers import Auditing
    from flywheel.services.select import Scoring
    from sampling.adapters.checks import load_checks
    from sampling.probes import shipped_probes
    from sampling.selection import SelectionConfig
    from sampling.verifiers import JsonFormatVerifier, Scorer

    config = SelectionConfig(sft_threshold=settings.select_sft_threshold, min_margin=settings.select_min_margin,
                             length_guard_margin=max(settings.select_min_margin, 0.4),
                             scorer=settings.select_decide_by or None)
    scorers: list[Scorer] = []
    if settings.reward_model:
        from sampling.adapters.reward_model import RewardModelScorer

        scorers.append(RewardModelScorer(settings.reward_model))
    if verify_json:
        scorers.append(JsonFormatVerifier())
    if settings.judge_rubric:
        scorers.append(make_judge(settings, Path(settings.judge_rubric).read_text(encoding="utf-8")))
    auditing = (Auditing(probes=shipped_probes(), min_accuracy=settings.probe_min_accuracy)
                if settings.scorer_audit else None)
    if not settings.select_checks:
        return Scoring(config=config, scorers=scorers, judge_may_be_policy=settings.judge_may_be_policy,
                       auditing=auditing)
    checks = load_checks(Path(settings.select_checks))
    return Scoring(config=config, scorers=scorers, scorers_for=checks.for_prompt,
                   check_names=frozenset(v.name for vs in checks.by_prompt.values() for v in vs),
                   check_texts=tuple(checks.texts), round_config=settings.round_config(),
                   judge_may_be_policy=settings.judge_may_be_policy, auditing=auditing)


def hard_cases(conn: psycopg.AsyncConnection) -> HardCaseStore:
    """The hard-case loop's store on `conn` (in autocommit)."""
    from store.hardcases import PostgresHardCases

    return PostgresHardCases(conn)


def nightly(settings: Settings, night: str | None = None) -> dict[str, Any]:
    """One nightly run with the settings' adapters (explicit URLs: the scheduler passes them); returns its report.
    `night`: the scheduled fire time it is the run of, claimed in the log so that one instance runs it."""
    from flywheel.services.nightly import run_nightly
    from store.db import connect
    started = datetime.now(UTC).isoformat()

    async def run() -> dict[str, Any]:
        async with await connect(settings.database_url, autocommit=True) as conn:
            return await run_nightly(
                [s.strip() for s in settings.nightly_steps.split(",") if s.strip()],
                store=hard_cases(conn), budget=settings.nightly_budget,
                generator=(partial(make_generator, settings)
                           if settings.generator_model or settings.generator_url else None),
                scoring=(partial(scoring, settings)
                         if settings.reward_model or settings.judge_rubric or settings.select_checks else None),
                build=round_ops(conn, settings.rounds_root, signals=settings.signals, announce=announcer(
                    settings, Endpoints(settings.database_url, settings.kafka_bootstrap))).build,
                history=partial(_unit_of_work, settings.database_url),
                run_id=str(uuid.uuid4()), started_at=started, night=night,
                config=settings.round_config())

    return asyncio.run(run())


@contextlib.asynccontextmanager
async def _unit_of_work(url: str) -> AsyncIterator[EventLog]:
    """A unit of work on a connection of its own."""
    from store.db import connect
    from store.unit_of_work import transaction

    async with await connect(url, autocommit=True) as conn, transaction(conn) as unit:
        yield unit
