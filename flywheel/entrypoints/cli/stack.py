"""`flywheel stack`: the embedded local stack."""

from __future__ import annotations

import typer

from flywheel.entrypoints.cli.common import _prepare, _settings, fail
from flywheel.entrypoints.cli.drain import _drain, _say_unread
from flywheel.settings import Endpoints

stack_app = typer.Typer(help="The embedded local stack (PostgreSQL + Kafka-protocol broker).", no_args_is_help=True)


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
        fail("the local stack is not running (flywheel stack up)", 2)
    typer.echo("\n".join(env.lines()))
