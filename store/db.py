"""Connections and schema creation; nothing is opened at import."""

from __future__ import annotations

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

_SCHEMA_LOCK = 0x466C7977  # advisory lock key: concurrent workers create the schema one at a time


def sqlalchemy_url(url: str) -> str:
    """postgresql://… → postgresql+psycopg://… (psycopg 3 driver)."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def libpq_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgresql+") else url


def engine(url: str) -> Engine:
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True)


def create_schema(url: str) -> None:
    """Create every table that does not exist yet (idempotent, safe to run from many processes)."""
    eng = engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            SQLModel.metadata.create_all(conn)
    finally:
        eng.dispose()


async def connect(url: str, *, autocommit: bool = False) -> psycopg.AsyncConnection:
    """autocommit=True for units of work that own their transactions (`async with conn.transaction()`)
    and read outside them; otherwise the first read opens a transaction that the blocks only nest in."""
    conn = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=autocommit)
    set_json_loads(orjson.loads, conn)  # jsonb read back (signal groups, sweeps): orjson is ~5x stdlib json
    return conn


def connect_sync(url: str) -> psycopg.Connection:
    conn = psycopg.Connection.connect(libpq_url(url))
    set_json_loads(orjson.loads, conn)
    return conn
