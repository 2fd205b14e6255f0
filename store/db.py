"""Connections and schema creation; nothing is opened at import."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import psycopg
import psycopg.sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_loads

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.engine import Connection, Engine

# SQLAlchemy, SQLModel and the table definitions load only to create or check the schema: a command that just
# connects (on-call's rollback) starts without them, a few tenths of a second sooner.

log = logging.getLogger("flywheel.store")
_SCHEMA_LOCK = 0x466C7977  # advisory lock key: concurrent workers create the schema one at a time


def sqlalchemy_url(url: str) -> str:
    """postgresql://… → postgresql+psycopg://… (psycopg 3 driver)."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def libpq_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgresql+") else url


def engine(url: str) -> Engine:
    from sqlalchemy import create_engine

    return create_engine(sqlalchemy_url(url), pool_pre_ping=True)


# The least-privilege roles the schema step keeps granted (NOLOGIN group roles unless given a password: grant
# them to login users, `GRANT flywheel_ingest TO app_user`). Roles are the server's, grants the database's.
INGEST_ROLE = "flywheel_ingest"  # the writing processes: workers, generation worker, scheduler
REPORT_ROLE = "flywheel_report"  # dashboards and reports: read only
TRAINER_ROLE = "flywheel_trainer"  # trainers reading rounds and lineage: read only
ROLES = (INGEST_ROLE, REPORT_ROLE, TRAINER_ROLE)
LOG_TABLE = "events"
SCHEDULER_JOBS = "scheduler_jobs"  # APScheduler's job store (flywheel.entrypoints.scheduler)


class SchemaNotCurrent(RuntimeError):
    """The schema is missing or outdated and this database user may not create or change it."""


def create_schema(url: str, *, role_passwords: Mapping[str, str] | None = None) -> None:
    """Create every table that does not exist yet (idempotent, safe to run from many processes), and, run by
    the tables' owner, the least-privilege roles and their grants.

    A read model that follows the log from a checkpoint (signals) and was created by an older version
    with other columns is dropped and derived again from the log: it holds nothing the log does not.
    Any other table in an older shape is an error that says what to do. A user that owns nothing (a
    worker connected as flywheel_ingest) finds the schema current and changes nothing; finding it
    missing or outdated, it stops with SchemaNotCurrent. `role_passwords`: role → password, making
    that role a login role with it."""
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError
    from sqlmodel import SQLModel

    from store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

    eng = engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            user = conn.execute(text("SELECT current_user")).scalar()
            try:
                _renew_outdated_followers(conn)
                SQLModel.metadata.create_all(conn)
                _scheduler_jobs_table().create(conn, checkfirst=True)
            except ProgrammingError as e:
                if getattr(e.orig, "sqlstate", None) != "42501":  # insufficient_privilege
                    raise
                raise SchemaNotCurrent(
                    f"the database schema is missing or outdated, and {user} may not create it: run "
                    "`flywheel setup` as the database's owner first") from None
            if conn.execute(text("SELECT pg_has_role(tableowner, 'USAGE') FROM pg_tables WHERE tablename = :t"
                                 " AND schemaname = current_schema()"), {"t": LOG_TABLE}).scalar():
                for ddl in _INDEXES:  # only a table's owner may index it, even when the index exists
                    conn.execute(text(ddl))
                _grant_roles(conn, role_passwords or {})
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
    "CREATE INDEX IF NOT EXISTS ix_signals_sources ON signals USING gin (sources) WITH (fastupdate = off)",
)


def _scheduler_jobs_table() -> Table:
    """APScheduler's job table, made here so that the scheduler, connected as flywheel_ingest, creates nothing."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    return SQLAlchemyJobStore(url="postgresql+psycopg://", tablename=SCHEDULER_JOBS).jobs_t


def _grant_roles(conn: Connection, passwords: Mapping[str, str]) -> None:
    """The roles (made once per server) and their grants on this database's tables: the ingest role appends to
    the log and keeps the read models, but may never change or delete an event; report and trainer read."""
    from sqlalchemy import text
    from sqlmodel import SQLModel

    names = ", ".join([*SQLModel.metadata.tables, SCHEDULER_JOBS])
    may_create = conn.execute(text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"))\
        .scalar()
    roles = []
    for role in ROLES:
        if not conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar():
            if not may_create:
                log.warning("role %s does not exist and %s may not create it: its grants are left out", role,
                            conn.execute(text("SELECT current_user")).scalar())
                continue
            # Another database's schema step may make it at the same moment: then it exists, as wanted.
            conn.execute(text(f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN;"
                              " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"))
        roles.append(role)
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT SELECT ON {names} TO {role}"))
    if INGEST_ROLE not in roles:
        return
    conn.execute(text(f"GRANT INSERT, UPDATE, DELETE ON {names} TO {INGEST_ROLE}"))
    conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {LOG_TABLE} FROM {INGEST_ROLE}"))
    conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {INGEST_ROLE}"))
    for role, password in passwords.items():
        if role not in ROLES:
            raise ValueError(f"no such Flywheel role: {role!r} (one of {', '.join(ROLES)})")
        quoted = psycopg.sql.Literal(password).as_string(conn.connection.driver_connection)
        conn.execute(text(f"ALTER ROLE {role} LOGIN PASSWORD {quoted}"))


_FOLLOWERS = {"signals": "signals"}  # table -> the checkpoint its projector follows the log from
# Columns added since a table was first released, with what brings an older table up to date in place.
_ADDED: dict[tuple[str, str], list[str]] = {
    ("tracking", "topic_id"): ["ALTER TABLE tracking ADD COLUMN topic_id text"],
    # Rounds published before promotion gates were promoted by being published.
    ("rounds", "state"): ["ALTER TABLE rounds ADD COLUMN state text NOT NULL DEFAULT 'promoted'"],
    ("rounds", "promotion"): ["ALTER TABLE rounds ADD COLUMN promotion jsonb NOT NULL DEFAULT '[]'"],
    ("rounds", "history"): ["ALTER TABLE rounds ADD COLUMN history jsonb NOT NULL DEFAULT '[]'"],
    # Runs registered before consumptions said which model and stage keep their run ids only.
    ("rounds", "consumptions"): [
        "ALTER TABLE rounds ADD COLUMN consumptions jsonb NOT NULL DEFAULT '[]'",
        "UPDATE rounds SET consumptions = (SELECT coalesce(jsonb_agg(jsonb_build_object('run_id', r)), '[]')"
        " FROM unnest(consumed_by) r)",
    ],
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
    from sqlalchemy import inspect, text
    from sqlmodel import SQLModel

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


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What `flywheel doctor` asks Postgres: who we are there, its version and its clock."""

    user: str
    version: str
    skew: float  # seconds the server's clock is ahead of this host's (negative: behind)
    schema: list[str]  # what differs from this version's schema (empty: current)


def server_facts(url: str, *, timeout: float = 5.0) -> ServerFacts:
    """Connect within `timeout` seconds and read the server's facts; changes nothing."""
    with psycopg.connect(libpq_url(url), connect_timeout=max(1, round(timeout))) as conn:
        conn.execute("SELECT 1")  # the connection's first round trip is not the one timed
        before = datetime.now(UTC)
        row = conn.execute("SELECT current_user, current_setting('server_version'), clock_timestamp()").fetchone()
        after = datetime.now(UTC)
        assert row is not None
    skew = (row[2] - (before + (after - before) / 2)).total_seconds()
    eng = engine(url)
    try:
        with eng.connect() as sa:
            problems = schema_problems(sa)
    finally:
        eng.dispose()
    return ServerFacts(user=row[0], version=row[1], skew=skew, schema=problems)


def schema_problems(conn: Connection) -> list[str]:
    """How the database's schema differs from this version's: missing tables, tables in another shape (the
    schema step, `flywheel setup`, brings them up to date or says what to do)."""
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

    wanted = {**SQLModel.metadata.tables, SCHEDULER_JOBS: _scheduler_jobs_table()}
    existing = {name: columns
                for (_, name), columns in inspect(conn).get_multi_columns(filter_names=list(wanted)).items()}
    missing = sorted(set(wanted) - set(existing))
    problems = [f"table{'s' if len(missing) > 1 else ''} missing: {', '.join(missing)}"] if missing else []
    for name in sorted(set(wanted) & set(existing)):
        have, want = {c["name"] for c in existing[name]}, set(wanted[name].columns.keys())
        if have != want:
            problems.append(f"table {name} is outdated: columns {', '.join(sorted(have ^ want))} differ")
    return problems
