"""The signals projector in a process of its own: it derives what catch_up derives, reports its runs,
raises its failures in the worker, and dies with the worker (real Postgres, real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from flywheel.domain.signals import SignalConfig
from flywheel.settings import Endpoints, Settings
from flywheel.simulator import generate
from store.signals import Progress
from streams.projector import Pacing, Projector, ProjectorFailed
from tests.integration.test_signals_store import drift, ingest_all

pytestmark = pytest.mark.integration
FAST = Pacing(interval=0.05, max_share=1.0, max_events=50_000)


def head(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
        return int(row[0]) if row else 0


def test_pacing_waits_the_interval_or_longer_after_a_long_run() -> None:
    pacing = Pacing(interval=1.0, max_share=0.25, max_events=10)
    assert pacing.next_start(started=100.0, took=0.1) == 101.0
    assert pacing.next_start(started=100.0, took=2.0) == 108.0  # 2 s of work in every 8


def test_the_projector_process_derives_the_log_and_reports_its_runs(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest_all(url, [s.value for s in generate(600, seed=3, bad_fraction=0.0)], [150], project_every=None)
    projector = Projector(url, FAST, SignalConfig())
    try:
        runs = wait_for_runs(projector, url)
    finally:
        projector.stop()
    assert runs and runs[-1].upto == head(url) and sum(r.rows for r in runs) > 0
    assert drift(url)["signals"] == (0, 0)  # what a replay derives


def test_once_the_log_stops_growing_the_projector_derives_without_waiting_out_its_pacing(
        endpoints: Endpoints) -> None:
    url = endpoints.database_url
    values = [s.value for s in generate(900, seed=4, bad_fraction=0.0)]
    ingest_all(url, values[:300], [150], project_every=None)
    # A share this small would make the wait after the first run minutes long.
    projector = Projector(url, Pacing(interval=0.1, max_share=0.001, max_events=50_000), SignalConfig())
    try:
        runs = wait_for_runs(projector, url)
        ingest_all(url, values[300:], [150], project_every=None, first_offset=300)
        started = time.monotonic()
        runs = wait_for_runs(projector, url)
        assert time.monotonic() - started < 20 and runs[-1].upto == head(url)
    finally:
        projector.stop()


def test_one_projector_leads_and_another_takes_over_when_it_goes(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    values = [s.value for s in generate(900, seed=6, bad_fraction=0.0)]
    ingest_all(url, values[:300], [150], project_every=None)
    first = Projector(url, FAST, SignalConfig())
    try:
        assert wait_for_runs(first, url)
        second = Projector(url, FAST, SignalConfig())
        try:
            for start in range(300, 600, 50):  # new events while both run: only the leader derives them
                ingest_all(url, values[start:start + 50], [50], project_every=None, first_offset=start)
                assert wait_for_runs(first, url)[-1].upto == head(url)
            assert second.runs() == []  # it waits while the leader lives
            first.stop()
            ingest_all(url, values[600:], [150], project_every=None, first_offset=600)
            assert wait_for_runs(second, url)[-1].upto == head(url)
        finally:
            second.stop()
    finally:
        first.stop()
    assert drift(url)["signals"] == (0, 0)


def wait_for_runs(projector: Projector, url: str, timeout: float = 60) -> list[Progress]:
    runs: list[Progress] = []
    deadline = time.monotonic() + timeout
    while (not runs or runs[-1].upto < head(url)) and time.monotonic() < deadline:
        runs += projector.runs()
        time.sleep(0.05)
    return runs


def test_a_failing_projector_raises_its_error_in_the_worker(endpoints: Endpoints) -> None:
    missing = endpoints.database_url.rsplit("/", 1)[0] + "/no_such_database"
    projector = Projector(missing, FAST, SignalConfig())
    try:
        deadline = time.monotonic() + 60
        with pytest.raises(ProjectorFailed, match="no_such_database"):
            while time.monotonic() < deadline:
                projector.runs()
                time.sleep(0.05)
    finally:
        projector.stop()


PARENT = """
import sys, time
from flywheel.domain.signals import SignalConfig
from streams.projector import Pacing, Projector
p = Projector(sys.argv[1], Pacing(0.05, 1.0, 1000), SignalConfig())
print(p.pid, flush=True)
time.sleep(600)
"""


def test_the_projector_dies_with_its_worker(endpoints: Endpoints) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, endpoints.database_url], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # running
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _exists(child):
        time.sleep(0.05)
    assert not _exists(child)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by init) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_a_worker_whose_projector_fails_stops_with_its_error(
        settings: Settings, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    ingest_all(settings.database_url, [s.value for s in generate(300, seed=2, bad_fraction=0.0)], [300],
               project_every=None)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:  # a read model derive cannot read
        conn.execute("UPDATE feedback SET payload = '{}'::jsonb WHERE type = 'thumbs'")
    worker = start_worker()
    try:
        code = worker.wait(120)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker kept running with a failed signals projector")
    log = (tmp_path / "worker-0.log").read_text(errors="replace")
    assert code != 0 and "the signals projector failed" in log and "KeyError: 'value'" in log
