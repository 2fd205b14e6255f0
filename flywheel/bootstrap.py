"""The wiring: settings → endpoints → adapters → services. The only module that knows them all."""

from __future__ import annotations

from flywheel.settings import Endpoints, Settings


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
