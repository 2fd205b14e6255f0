"""The stack a benchmark runs on: the one the settings point at, or an embedded one made for the run."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from flywheel.settings import Settings
from store.db import create_schema


@contextmanager
def fresh_database(server_url: str, name: str) -> Iterator[str]:
    """A new database with the schema, on the server of `server_url`, so a run finds nothing left over from
    another (a re-run with the same seed would otherwise store nothing: every event id is there); its URL.
    Dropped afterwards: a 1M-event run leaves gigabytes on a server the settings may point at."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        url = server_url.rsplit("/", 1)[0] + "/" + name
        create_schema(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def bench_stack(base: Settings, prefix: str) -> Iterator[tuple[str, str]]:
    """(database URL, Kafka bootstrap): FLYWHEEL_DATABASE_URL and FLYWHEEL_KAFKA_BOOTSTRAP when both are set,
    else a fresh embedded stack under a temporary directory, purged afterwards."""
    if base.database_url and base.kafka_bootstrap:
        yield base.database_url, base.kafka_bootstrap
        return
    from infra.stack import LocalStack

    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # the embedded PostgreSQL runs as `nobody` when we are root
    try:
        env = LocalStack(root / "stack").up()
        yield env.database_url, env.kafka_bootstrap
    finally:
        LocalStack(root / "stack").purge()
        shutil.rmtree(root, ignore_errors=True)
