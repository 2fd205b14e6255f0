"""Fixtures: one real local stack per test session (started by the project's own code), a fresh
database and fresh topic names per test, and helpers to run real `flywheel` processes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from flywheel.settings import Endpoints, Settings


@pytest.fixture(scope="session")
def stack() -> Iterator[Endpoints]:
    from infra.stack import LocalStack

    root = Path(tempfile.mkdtemp(prefix="flywheel-test-"))
    root.chmod(0o755)  # the embedded PostgreSQL runs as an unprivileged user when tests run as root
    local = LocalStack(root / "stack")
    env = local.up()
    try:
        yield Endpoints(env.database_url, env.kafka_bootstrap, embedded=True)
    finally:
        local.purge()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str, *, schema: bool = True) -> Iterator[str]:
    """A new database on the server of `server_url` (with the schema, unless not `schema`), its URL; dropped
    afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    base = server_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        if schema:
            from store.db import create_schema

            create_schema(f"{base}/{name}")
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def endpoints(stack: Endpoints) -> Iterator[Endpoints]:
    """A fresh database on the session's server; dropped afterwards."""
    with fresh_database(stack.database_url) as url:
        yield Endpoints(url, stack.kafka_bootstrap, embedded=True)


@pytest.fixture
def settings(endpoints: Endpoints, tmp_path: Path) -> Settings:
    """Settings with topic names and a consumer group of this test's own."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        home=tmp_path,
        database_url=endpoints.database_url,
        kafka_bootstrap=endpoints.kafka_bootstrap,
        feedback_topic=f"feedback-{tag}",
        deadletter_topic=f"deadletter-{tag}",
        rounds_topic=f"rounds-{tag}",
        consumer_group=f"ingest-{tag}",
        partitions=4,
        batch_size=500,
        grace_seconds=2.0,
        idle_seconds=3.0,
        sweep_interval=1.0,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The FLYWHEEL_* environment that reproduces `settings` in a child process."""
    return settings.child_env()


@pytest.fixture
def run_cli(settings: Settings) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "flywheel", *args],
            env=settings_env(settings), capture_output=True, text=True, timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"flywheel {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    return run


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts real `flywheel worker` processes (or another kind: `command`, with `settings` of its own);
    every one still alive is stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(command: str = "worker", with_settings: Settings | None = None) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{command}-{len(procs)}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "flywheel", command], env=settings_env(with_settings or settings),
            stdout=log, stderr=log,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            last = getattr(predicate, "last", None)
            seen = f"; last seen: {last}" if last else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")
        time.sleep(interval)
