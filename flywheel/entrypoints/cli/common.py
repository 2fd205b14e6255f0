"""What several command groups share: settings, endpoints, the store, printing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import typer
from pydantic import ValidationError

from flywheel.bootstrap import NoStack, resolve
from flywheel.settings import Endpoints, Settings

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


def without_password(url: str) -> str:
    """A database URL to show a person: its password, if any, as ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _operator(by: str | None, settings: Settings) -> str:
    """Who is acting: --by, else FLYWHEEL_OPERATOR, else the OS user."""
    import getpass

    return by or settings.operator or getpass.getuser()


def _settings() -> Settings:
    """The settings from the environment; a bad or unknown FLYWHEEL_* variable stops the command with its name."""
    try:
        return Settings()
    except ValidationError as e:
        for error in e.errors():
            where = ".".join(map(str, error["loc"]))
            message = str(error["ctx"]["error"]) if "error" in error.get("ctx", {}) else error["msg"]
            typer.echo(f"error: {f'FLYWHEEL_{where.upper()}: ' if where else ''}{message}", err=True)
        raise typer.Exit(2) from None  # every error above, not only the first


def _endpoints(settings: Settings, *, start: bool = False) -> Endpoints:
    with failing(NoStack, code=2):
        endpoints = resolve(settings, start=start)
    return endpoints


def _prepare(settings: Settings, endpoints: Endpoints) -> dict[str, int]:
    """Schema and topics; returns each topic's partition count."""
    from store.db import create_schema
    from streams.topics import ensure_topics

    create_schema(endpoints.database_url)
    return ensure_topics(endpoints.kafka_bootstrap, settings)


def _print(data: Any, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else human)


def _in_store(work: Callable[[Any], Any], *, schema: bool = True) -> Any:
    """Run an async unit of work on one store connection; with `schema`, create what is missing of the schema
    first (on-call's commands, which only change what exists, skip it and start sooner)."""
    from store.db import connect, create_schema

    endpoints = _endpoints(_settings())
    if schema:
        create_schema(endpoints.database_url)

    async def run() -> Any:
        conn = await connect(endpoints.database_url, autocommit=True)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())
