"""Connections and schema creation; nothing is opened at import."""

from __future__ import annotations

import orjson
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_loads
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine
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
    """Create every table that does not exist yet (idempotent, safe to run from many processes).

    A read model that follows the log from a checkpoint (signals) and was created by an older version
    with other columns is dropped and derived again from the log: it holds nothing the log does not.
    Any other table in an older shape is an error that says what to do."""
    eng = engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            _renew_outdated_followers(conn)
            SQLModel.metadata.create_all(conn)
            for ddl in _INDEXES:
                conn.execute(text(ddl))
    finally:
        eng.dispose()


# Indexes added since their table was first released (create_all makes them only with a new table).
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_interactions_user_id_hash ON interactions (user_id_hash)",
    "CREATE INDEX IF NOT EXISTS ix_feedback_user_id_hash ON feedback (user_id_hash)",
    # A comparison counts on both interactions it compares: an erasure recounts them by either side.
    "CREATE INDEX IF NOT EXISTS ix_feedback_chosen ON feedback ((payload ->> 'chosen_interaction_id'), position)"
    " WHERE type = 'comparison'",
    "CREATE INDEX IF NOT EXISTS ix_feedback_rejected ON feedback ((payload ->> 'rejected_interaction_id'), position)"
    " WHERE type = 'comparison'",
)
_FOLLOWERS = {"signals": "signals"}  # table -> the checkpoint its projector follows the log from
# Columns added since a table was first released, with what brings an older table up to date in place.
_ADDED: dict[tuple[str, str], list[str]] = {
    ("tracking", "topic_id"): ["ALTER TABLE tracking ADD COLUMN topic_id text"],
    # Rounds published before promotion gates were promoted by being published.
    ("rounds", "state"): ["ALTER TABLE rounds ADD COLUMN state text NOT NULL DEFAULT 'promoted'"],
    ("rounds", "promotion"): ["ALTER TABLE rounds ADD COLUMN promotion jsonb NOT NULL DEFAULT '[]'"],
    ("rounds", "history"): ["ALTER TABLE rounds ADD COLUMN history jsonb NOT NULL DEFAULT '[]'"],
    ("parked", "topic_id"): ["ALTER TABLE parked ADD COLUMN topic_id text NOT NULL DEFAULT ''"],
    ("dead_letters", "topic_id"): [
        "ALTER TABLE dead_letters ADD COLUMN topic_id text NOT NULL DEFAULT ''",
        "ALTER TABLE dead_letters DROP CONSTRAINT IF EXISTS dead_letters_topic_partition_offset_key",
        'ALTER TABLE dead_letters ADD UNIQUE (topic, topic_id, partition, "offset")',
    ],
    ("dead_letters", "sealed_for"): [
        "ALTER TABLE dead_letters ADD COLUMN sealed_for text",
        "ALTER TABLE dead_letters ALTER COLUMN original DROP NOT NULL",
    ],
    ("parked", "user_id_hash"): [
        "ALTER TABLE parked ADD COLUMN user_id_hash text",
        "ALTER TABLE parked ALTER COLUMN original DROP NOT NULL",
        "UPDATE parked SET user_id_hash = data -> 'user' ->> 'id_hash'",
    ],
    # Filled from the log, as a replay would; the signals were derived without them (no finish reasons in their
    # lineage), so they are derived again: the table goes, the checkpoint with it, and the projector starts over.
    ("interactions", "tools"): [
        "ALTER TABLE interactions ADD COLUMN tools jsonb",
        "UPDATE interactions i SET tools = e.data -> 'payload' -> 'tools' FROM events e"
        " WHERE e.position = i.position AND e.data -> 'payload' ? 'tools'",
    ],
    ("interactions", "finish_reason"): [
        "ALTER TABLE interactions ADD COLUMN finish_reason text",
        "UPDATE interactions i SET finish_reason = e.data -> 'payload' ->> 'finish_reason' FROM events e"
        " WHERE e.position = i.position AND e.data -> 'payload' ? 'finish_reason'",
        "DROP TABLE IF EXISTS signals",
        "DO $$ BEGIN IF to_regclass('checkpoints') IS NOT NULL THEN"
        " DELETE FROM checkpoints WHERE name = 'signals'; END IF; END $$",
    ],
}


def _renew_outdated_followers(conn: Connection) -> None:
    wanted = SQLModel.metadata.tables
    # The columns of every table there is, in one catalog query (a query per table was most of a start-up's 30 ms).
    existing = {name: columns
                for (_, name), columns in inspect(conn).get_multi_columns(filter_names=list(wanted)).items()}
    for name, table in wanted.items():
        if name not in existing:
            continue
        columns = existing[name]
        have, want = {c["name"] for c in columns}, set(table.columns.keys())
        if have < want and all((name, c) in _ADDED for c in want - have):
            for column in sorted(want - have):
                for ddl in _ADDED[(name, column)]:
                    conn.execute(text(ddl))
            continue
        if have == want and (name not in _FOLLOWERS or {c["name"]: c["type"].compile(conn.dialect) for c in columns}
                             == {c.name: c.type.compile(conn.dialect) for c in table.columns}):
            continue  # a follower's column types count too: it is renewed as cheaply as it is derived
        if name not in _FOLLOWERS:
            raise RuntimeError(
                f"table {name!r} was made by another version of Flywheel (columns {sorted(have ^ want)} differ): "
                "start from a fresh database and `flywheel replay` the log into it (locally: "
                "`flywheel stack down --purge`)")
        conn.execute(text(f"DROP TABLE {name}"))
        if "checkpoints" in existing:
            conn.execute(text("DELETE FROM checkpoints WHERE name = :n"), {"n": _FOLLOWERS[name]})


async def connect(url: str, *, autocommit: bool = False) -> psycopg.AsyncConnection:
    """autocommit=True for units of work that own their transactions (`async with conn.transaction()`)
    and read outside them; otherwise the first read opens a transaction that the blocks only nest in."""
    conn = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=autocommit)
    set_json_loads(orjson.loads, conn)  # jsonb read back (signal groups, sweeps): orjson is ~5x stdlib json
    return conn


def conninfo(conn: psycopg.AsyncConnection | psycopg.Connection) -> str:
    """What connects to the same database as `conn`, as the same user (its password too: info.dsn leaves it
    out)."""
    password = {"password": conn.info.password} if conn.info.password else {}
    return make_conninfo(conn.info.dsn, **password)


def connect_sync(url: str) -> psycopg.Connection:
    conn = psycopg.Connection.connect(libpq_url(url))
    set_json_loads(orjson.loads, conn)
    return conn
