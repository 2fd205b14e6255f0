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
from typing import TYPE_CHECKING, Any

from flywheel.settings import Endpoints, Settings

# Only what a command needs is imported, when it needs it: every CLI command imports this module.
if TYPE_CHECKING:
    import psycopg

    from flywheel.domain.commands import BuildRound, RegisterConsumption, RestoreRound, RollBackRound
    from flywheel.domain.signals import SignalConfig
    from flywheel.ports import Announcer, EventLog, HardCaseStore, RoundBuilder
    from flywheel.services.build_round import Published
    from flywheel.services.rollback import Change
    from sampling.generation import Generator


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


@dataclass(frozen=True, slots=True)
class RoundOps:
    """The rounds' use cases with their adapters bound in (one store connection, the rounds directory)."""

    build: Callable[[BuildRound], Awaitable[Published]]
    rollback: Callable[[RollBackRound], Awaitable[Change]]
    restore: Callable[[RestoreRound], Awaitable[Change]]
    register_consumption: Callable[[RegisterConsumption], Awaitable[bool]]


def announcer(settings: Settings, endpoints: Endpoints) -> Announcer:
    """Round changes announced on the rounds topic."""
    from streams.announcer import KafkaAnnouncer

    return KafkaAnnouncer(endpoints.kafka_bootstrap, settings.rounds_topic)


def rounds_wiring(root: Path, *, announce: Announcer | None = None, builder: RoundBuilder | None = None,
                  signals: SignalConfig | None = None) -> Callable[[psycopg.AsyncConnection], RoundOps]:
    """The rounds' use cases, ready to bind to a store connection (in autocommit): round directories under `root`,
    the builder in a process of its own; without `announce`, changes are not announced. `signals`: the rules the
    signals read model is derived with (FLYWHEEL_SIGNALS; default: the default rules). Everything a build needs
    is imported here, before any connection is made."""
    from flywheel.domain.signals import SignalConfig
    from flywheel.runtime.round_builder import ProcessRoundBuilder
    from flywheel.services.build_round import build_round
    from flywheel.services.rollback import register_consumption, restore, rollback
    from store.roundfiles import RoundDirectories
    from store.roundsource import PostgresRoundSource
    from store.unit_of_work import PostgresRounds
    from streams.announcer import Silent

    files, told, rules = RoundDirectories(root), announce or Silent(), signals or SignalConfig()

    def bind(conn: psycopg.AsyncConnection) -> RoundOps:
        rounds = PostgresRounds(conn)
        return RoundOps(
            build=partial(build_round, source=PostgresRoundSource(conn, rules),
                          builder=builder or ProcessRoundBuilder(), files=files, announce=told),
            rollback=partial(rollback, rounds=rounds, files=files, announce=told),
            restore=partial(restore, rounds=rounds, files=files, announce=told),
            register_consumption=partial(register_consumption, rounds=rounds, files=files),
        )

    return bind


def round_ops(conn: psycopg.AsyncConnection, root: Path, *, announce: Announcer | None = None,
              builder: RoundBuilder | None = None, signals: SignalConfig | None = None) -> RoundOps:
    """rounds_wiring bound to `conn` at once."""
    return rounds_wiring(root, announce=announce, builder=builder, signals=signals)(conn)


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


def hard_cases(conn: psycopg.AsyncConnection) -> HardCaseStore:
    """The hard-case loop's store on `conn` (in autocommit)."""
    from store.hardcases import PostgresHardCases

    return PostgresHardCases(conn)


def nightly(settings: Settings) -> dict[str, Any]:
    """One nightly run with the settings' adapters (explicit URLs: the scheduler passes them); returns its report."""
    from flywheel.services.nightly import run_nightly
    from sampling.adapters.reward_model import RewardModelScorer
    from store.db import connect
    started = datetime.now(UTC).isoformat()

    async def run() -> dict[str, Any]:
        async with await connect(settings.database_url, autocommit=True) as conn:
            return await run_nightly(
                [s.strip() for s in settings.nightly_steps.split(",") if s.strip()],
                store=hard_cases(conn), budget=settings.nightly_budget,
                generator=(partial(make_generator, settings)
                           if settings.generator_model or settings.generator_url else None),
                scorer=partial(RewardModelScorer, settings.reward_model) if settings.reward_model else None,
                build=round_ops(conn, settings.rounds_root, signals=settings.signals, announce=announcer(
                    settings, Endpoints(settings.database_url, settings.kafka_bootstrap))).build,
                history=partial(_unit_of_work, settings.database_url),
                run_id=str(uuid.uuid4()), started_at=started)

    return asyncio.run(run())


@contextlib.asynccontextmanager
async def _unit_of_work(url: str) -> AsyncIterator[EventLog]:
    """A unit of work on a connection of its own."""
    from store.db import connect
    from store.unit_of_work import transaction

    async with await connect(url, autocommit=True) as conn, transaction(conn) as unit:
        yield unit
