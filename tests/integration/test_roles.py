"""The least-privilege roles the schema step makes, on the real Postgres, and sslmode from the database URL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import errors

from flywheel.domain.log import NewEvent
from flywheel.settings import Endpoints, Settings
from store.db import INGEST_ROLE, REPORT_ROLE, TRAINER_ROLE, SchemaNotCurrent, connect_sync, create_schema
from store.eventstore import append
from store.stats import store_stats
from tests.conftest import fresh_database, wait_until
from tests.store_helpers import in_store

pytestmark = pytest.mark.integration


def as_role(url: str, role: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET ROLE {role}")
    return conn


def event(n: int = 0) -> NewEvent:
    return NewEvent(event_id=str(uuid.uuid4()), type="tracking_reset", occurred_at="2026-12-01T00:00:00+00:00",
                    data={"n": n})


def test_the_ingest_role_appends_to_the_log_but_never_changes_or_deletes_it(endpoints: Endpoints) -> None:
    async def append_as_ingest(conn: psycopg.AsyncConnection) -> int:
        await conn.execute(f"SET ROLE {INGEST_ROLE}")
        async with conn.transaction():
            return len(await append(conn, [event(1), event(2)]))

    assert in_store(endpoints.database_url, append_as_ingest) == 2
    with as_role(endpoints.database_url, INGEST_ROLE) as conn:
        for statement in ("UPDATE events SET type = 'x'", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)
        conn.execute("UPDATE tracking SET \"offset\" = \"offset\"")  # read models and offsets are its to keep
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE mine (x int)")


@pytest.mark.parametrize("role", [REPORT_ROLE, TRAINER_ROLE])
def test_report_and_trainer_roles_read_only(endpoints: Endpoints, role: str) -> None:
    with as_role(endpoints.database_url, role) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        conn.execute("SELECT count(*) FROM rounds")
        for statement in ("INSERT INTO checkpoints (name, position) VALUES ('x', 1)", "DELETE FROM signals",
                          "UPDATE rounds SET state = 'x'"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)


@pytest.fixture
def bare_database(stack: Endpoints) -> Iterator[str]:
    """A database with no schema yet."""
    with fresh_database(stack.database_url, schema=False) as url:
        yield url


def login(url: str, role: str) -> str:
    """`url` as `role` (the local server trusts any password: the role's LOGIN attribute is what is checked)."""
    rest = url.split("://", 1)[1].split("@", 1)[1]
    return f"postgresql://{role}:any@{rest}"


def test_a_password_makes_a_role_a_login_role_and_it_creates_nothing(bare_database: str) -> None:
    create_schema(bare_database)
    with psycopg.connect(bare_database, autocommit=True) as conn:  # roles are the server's: another test's password
        conn.execute(f"ALTER ROLE {TRAINER_ROLE} NOLOGIN")
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        connect_sync(login(bare_database, TRAINER_ROLE)).close()
    create_schema(bare_database, role_passwords={INGEST_ROLE: "ingest-pw", TRAINER_ROLE: "trainer-pw"})
    with connect_sync(login(bare_database, TRAINER_ROLE)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (TRAINER_ROLE,)
    create_schema(login(bare_database, INGEST_ROLE))  # the schema is current: nothing to do, nothing refused


def test_a_role_that_may_not_create_the_schema_says_what_to_run(bare_database: str, stack: Endpoints) -> None:
    create_schema(stack.database_url, role_passwords={INGEST_ROLE: "ingest-pw"})  # the role exists, may log in
    with pytest.raises(SchemaNotCurrent, match=r"flywheel_ingest may not create it: run `flywheel setup`"):
        create_schema(login(bare_database, INGEST_ROLE))


def test_sslmode_in_the_database_url_reaches_the_connection(endpoints: Endpoints) -> None:
    with connect_sync(endpoints.database_url + "?sslmode=disable") as conn:
        assert conn.info.get_parameters()["sslmode"] == "disable"
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL, but SSL was required"):
        connect_sync(endpoints.database_url + "?sslmode=require")


def test_a_worker_connected_as_the_ingest_role_ingests_and_derives(
    settings: Settings, endpoints: Endpoints, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """The ingest path (append, projections, tracking, parked feedback, dead letters, the signals projector) needs
    no more than the ingest role has."""
    create_schema(endpoints.database_url, role_passwords={INGEST_ROLE: "ingest-pw"})
    worker = start_worker(with_settings=settings.model_copy(
        update={"database_url": login(endpoints.database_url, INGEST_ROLE)}))
    summary = json.loads(run_cli("simulate", "--events", "400", "--seed", "5", "--bad-fraction", "0.1",
                                 "--json").stdout)

    def reconciled() -> bool:
        assert worker.poll() is None, "the worker stopped"
        with connect_sync(endpoints.database_url) as conn:
            s = store_stats(conn)
        return (s["events"]["by_type"] == summary["valid"]["by_type"]
                and s["dead_lettered"]["by_reason"] == summary["bad"]["by_reason"] and s["parked"] == 0
                and s["signals_behind"] == 0)

    wait_until(reconciled, timeout=180, what="stored + dead-lettered == produced, signals derived, as flywheel_ingest")


def test_a_command_says_sslmode_require_failed_without_showing_the_password(
    settings: Settings, endpoints: Endpoints,
) -> None:
    rest = endpoints.database_url.split("@", 1)[1]
    env = settings.child_env()
    env["FLYWHEEL_DATABASE_URL"] = f"postgresql://postgres:topsecret-pw@{rest}?sslmode=require"
    done = subprocess.run([sys.executable, "-m", "flywheel", "stats"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert f"cannot use the database at postgresql://postgres:***@{rest}?sslmode=require" in done.stderr
    assert "SSL was required" in done.stderr
    assert "topsecret-pw" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_setup_makes_a_role_a_login_role_from_its_password_setting(settings: Settings, bare_database: str) -> None:
    env = {**settings.child_env(), "FLYWHEEL_DATABASE_URL": bare_database, "FLYWHEEL_DB_REPORT_PASSWORD": "rep-pw-7"}
    done = subprocess.run([sys.executable, "-m", "flywheel", "setup", "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["roles"][REPORT_ROLE] == "login" and out["schema"] == "current"
    assert set(out["topics"]) == {settings.feedback_topic, settings.deadletter_topic, settings.rounds_topic,
                                  settings.generation_topic}
    assert "rep-pw-7" not in done.stdout + done.stderr
    with connect_sync(login(bare_database, REPORT_ROLE)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
