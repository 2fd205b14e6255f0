"""What several command groups share: settings, endpoints, the store, printing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import typer
from pydantic import ValidationError

from flywheel.bootstrap import NoStack, resolve
from flywheel.settings import Endpoints, Settings, mask_url

BY_HELP = "Who is acting (default FLYWHEEL_OPERATOR, else the OS user); recorded in the log."


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop the command: `error: message` on stderr, exit status `code` (1: the thing asked for is not there or
    cannot be done; 2: the command line or the configuration is wrong)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code) from None


@contextlib.contextmanager
def failing(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """Turn one of `errors` raised in the block into `fail(str(error), code)`."""
    try:
        yield
    except errors as e:
        fail(str(e), code)


def _operator(by: str | None, settings: Settings) -> str:
    """Who is acting: --by, else FLYWHEEL_OPERATOR, else the OS user."""
    import getpass

    return by or settings.operator or getpass.getuser()


def _settings() -> Settings:
    """The settings from the environment; a bad or unknown FLYWHEEL_* variable stops the command with its name."""
    try:
        settings = Settings()
    except ValidationError as e:
        for error in e.errors():
            where = ".".join(map(str, error["loc"]))
            message = str(error["ctx"]["error"]) if "error" in error.get("ctx", {}) else error["msg"]
            typer.echo(f"error: {f'FLYWHEEL_{where.upper()}: ' if where else ''}{message}", err=True)
        raise typer.Exit(2) from None  # every error above, not only the first
    hide_in_logs(settings.secrets())
    return settings


_HIDDEN: set[str] = set()


def hide_in_logs(secrets: list[str]) -> None:
    """Replace each of `secrets` by *** in every log record this process makes from now on (a library may log
    its configuration: kafka-python does, at DEBUG, password included)."""
    fresh = not _HIDDEN
    _HIDDEN.update(s for s in secrets if s)
    if not fresh or not _HIDDEN:
        return
    make = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = make(*args, **kwargs)
        try:
            message = made.getMessage()
        except (TypeError, ValueError):  # a bad format string: the handler reports it, as without this
            return made
        if any(s in message for s in _HIDDEN):
            for s in sorted(_HIDDEN, key=len, reverse=True):
                message = message.replace(s, "***")
            made.msg, made.args = message, None
        return made

    logging.setLogRecordFactory(record)


def _endpoints(settings: Settings, *, start: bool = False) -> Endpoints:
    with failing(NoStack, code=2):
        endpoints = resolve(settings, start=start)
    return endpoints


def _prepare(settings: Settings, endpoints: Endpoints,
             role_passwords: dict[str, str] | None = None) -> dict[str, int]:
    """Schema (with the roles' passwords, when given) and topics; returns each topic's partition count."""
    from streams.topics import BrokerUnreachable, ensure_topics

    _schema(endpoints.database_url, role_passwords)
    with failing(BrokerUnreachable, code=2):
        partitions = ensure_topics(endpoints.kafka_bootstrap, settings)
    return partitions


def _schema(url: str, role_passwords: dict[str, str] | None = None) -> None:
    """The schema current (store.db.create_schema), or a clear error when this user may not make it so."""
    from sqlalchemy.exc import OperationalError

    from store.db import SchemaNotCurrent, create_schema

    try:
        create_schema(url, role_passwords=role_passwords)
    except SchemaNotCurrent as e:
        fail(str(e), code=2)
    except OperationalError as e:  # psycopg's reason names host, port and user, never the password
        fail(f"cannot use the database at {mask_url(url)}: {' '.join(str(e.orig).split())}", code=2)


def _print(data: Any, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else human)


def _in_store(work: Callable[[Any], Any], *, schema: bool = True) -> Any:
    """Run an async unit of work on one store connection; with `schema`, create what is missing of the schema
    first (on-call's commands, which only change what exists, skip it and start sooner)."""
    from store.db import connect

    endpoints = _endpoints(_settings())
    if schema:
        _schema(endpoints.database_url)

    async def run() -> Any:
        conn = await connect(endpoints.database_url, autocommit=True)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())
