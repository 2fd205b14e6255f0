"""Where Postgres and Kafka are: given by FLYWHEEL_* variables (production), else the embedded local stack."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.settings import Settings


class NoStack(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    kafka_bootstrap: str
    embedded: bool = False


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
