"""Nothing lost across restarts of the local stack: `flywheel up` stopped with Ctrl-C and started again, and
`flywheel stack down` / `stack up` under a worker; the broker keeps its topics in memory, so each start is a new
log under the same name. And a truncated log stops the worker until `flywheel tracking reset` decides."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from flywheel.settings import Settings
from store.db import connect_sync
from streams.topics import ensure_topics, topic_id
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def home() -> Iterator[Path]:
    """A FLYWHEEL_HOME of its own, reachable by the unprivileged user the embedded PostgreSQL runs as."""
    root = Path(tempfile.mkdtemp(prefix="flywheel-home-"))
    root.chmod(0o755)
    yield root
    env = _env(root)
    subprocess.run([sys.executable, "-m", "flywheel", "stack", "down", "--purge"], env=env, capture_output=True,
                   timeout=120)
    shutil.rmtree(root, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update(FLYWHEEL_HOME=str(home), FLYWHEEL_GRACE_SECONDS="2", FLYWHEEL_IDLE_SECONDS="3",
               FLYWHEEL_SWEEP_INTERVAL="1")
    return env


def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "flywheel", *args], env=_env(home), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"flywheel {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def start(home: Path, command: str, log: Path) -> subprocess.Popen[bytes]:
    """A long-running command in a session of its own (as a terminal would run it); ready once its worker is."""
    with open(log, "wb") as out:
        # As a terminal starts a foreground command: Ctrl-C not ignored, whatever this test process inherited (a
        # shell's background job ignores SIGINT, and a child would inherit that).
        proc = subprocess.Popen([sys.executable, "-m", "flywheel", command], env=_env(home), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until(lambda: proc.poll() is not None or "worker ready: " in log.read_text(errors="replace"),
               timeout=120, what=f"flywheel {command} ready")
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    return proc


def ctrl_c(proc: subprocess.Popen[bytes], log: Path) -> int:
    """Ctrl-C at the terminal (SIGINT to the foreground process group); returns the messages reported unread."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("no exit within 120 s of Ctrl-C:\n" + log.read_text(errors="replace")[-12000:]) from None
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return _unread(text)


def _unread(text: str) -> int:
    left = re.search(r"(\d+) messages were left unread", text)
    assert left or "drained: every message on the broker is ingested" in text, text[-3000:]
    return int(left.group(1)) if left else 0


def counts(home: Path) -> dict[str, int]:
    env = cli(home, "stack", "env").stdout
    url = re.search(r"FLYWHEEL_DATABASE_URL=(\S+)", env)
    assert url
    with connect_sync(url.group(1)) as conn:
        stored, resets = conn.execute(
            "SELECT count(*) FILTER (WHERE data ? 'user'), count(*) FILTER (WHERE type = 'tracking_reset')"
            " FROM events").fetchone()
        (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        (parked,) = conn.execute("SELECT count(*) FROM parked").fetchone()
    return {"stored": stored, "dead": dead, "parked": parked, "resets": resets}


def reconciled(home: Path, produced: int, unread: int) -> Callable[[], bool]:
    def check() -> bool:
        c = counts(home)
        check.last = c  # type: ignore[attr-defined]
        return c["stored"] + c["dead"] + c["parked"] + unread == produced

    return check


def simulate(home: Path, events: int, seed: int, start_at: str) -> int:
    out = json.loads(cli(home, "simulate", "--events", str(events), "--seed", str(seed), "--start", start_at,
                         "--json").stdout)
    return int(out["produced"])


def test_flywheel_up_restarted_loses_nothing(home: Path) -> None:
    first = start(home, "up", home / "up-1.log")
    produced = simulate(home, 2000, 1, "2026-11-01T08:00:00+00:00")
    wait_until(reconciled(home, produced, 0), timeout=180, what="the first traffic ingested")
    unread = ctrl_c(first, home / "up-1.log")

    second = start(home, "up", home / "up-2.log")
    produced += simulate(home, 3000, 9, "2026-11-02T08:00:00+00:00")
    wait_until(reconciled(home, produced, unread), timeout=180, what="stored + dead + parked + unread == produced")
    assert "was created again" in (home / "up-2.log").read_text(errors="replace")
    assert counts(home)["resets"] > 0  # each partition read from its start, recorded in the log
    unread += ctrl_c(second, home / "up-2.log")
    assert unread == 0  # both drains finished: nothing was left on the broker
    # A person sees a short status, not the Kafka clients' and Faust's internals.
    shown = (home / "up-2.log").read_text(errors="replace").splitlines()
    assert shown[0] == "starting the local stack…" and any(line.startswith("ingest: ") for line in shown)
    assert not [line for line in shown if "[INFO]" in line or "Kafka" in line]
    assert len(shown) < 40, shown
    cli(home, "stack", "up")  # the database again, to count what it kept
    c = counts(home)
    assert c["stored"] + c["dead"] + c["parked"] + unread == produced == 5000


def test_stack_down_and_up_under_a_worker_loses_nothing(home: Path) -> None:
    cli(home, "stack", "up")
    worker = start(home, "worker", home / "worker-1.log")
    produced = simulate(home, 2000, 1, "2026-11-01T08:00:00+00:00")
    down = cli(home, "stack", "down")  # lets the running worker drain, then stops the broker and the database
    unread = _unread(down.stdout + down.stderr)
    worker.wait(60)  # its broker and database went away: it stops with an error
    assert worker.returncode != 0

    cli(home, "stack", "up")
    worker = start(home, "worker", home / "worker-2.log")
    try:
        produced += simulate(home, 3000, 9, "2026-11-02T08:00:00+00:00")
        wait_until(reconciled(home, produced, unread), timeout=180,
                   what="stored + dead + parked + unread == produced")
    finally:
        worker.terminate()
        worker.wait(60)
    assert produced == 5000 and counts(home)["stored"] >= 4000


def _tracked(settings: Settings) -> dict[int, int]:
    with connect_sync(settings.database_url) as conn:
        rows = conn.execute('SELECT partition, "offset" FROM tracking WHERE consumer_group = %s AND topic = %s',
                            [settings.consumer_group, settings.feedback_topic]).fetchall()
    return {int(p): int(o) for p, o in rows}


def test_a_truncated_log_stops_the_worker_until_an_operator_resets_the_partition(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    from tests.factories import interaction, raw

    one = settings.model_copy(update={"partitions": 1})
    ensure_topics(settings.kafka_bootstrap, one)
    incarnation = topic_id(settings.kafka_bootstrap, settings.feedback_topic)
    # The store has read this very log (same topic id) up to offset 500, but the broker's log now ends at 10.
    with connect_sync(settings.database_url) as conn:
        conn.execute('INSERT INTO tracking (consumer_group, topic, partition, "offset", topic_id, updated_at)'
                     " VALUES (%s, %s, 0, 500, %s, now())", [settings.consumer_group, settings.feedback_topic,
                                                                incarnation])
        conn.commit()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    events: list[dict[str, Any]] = [interaction(f"trunc-{i}") for i in range(10)]
    for e in events:
        producer.send(settings.feedback_topic, key=e["interaction_id"].encode(), value=raw(e))
    producer.flush()
    producer.close()

    worker = start_worker("worker", one)
    worker.wait(120)
    log = next(tmp_path.glob("worker-*.log")).read_text(errors="replace")
    assert worker.returncode != 0
    assert f"{settings.feedback_topic}[0]: the store has offset 500, but the broker's log ends at 10" in log
    assert _tracked(settings) == {0: 500}  # nothing was taken for a redelivery

    out = run_cli("tracking", "reset", "--topic", settings.feedback_topic, "--partition", "0", "--to", "start",
                  "--by", "on-call", "--reason", "broker lost its disk").stdout
    assert "offset 500 -> -1" in out
    start_worker("worker", one)
    wait_until(lambda: _tracked(settings) == {0: 9}, timeout=120, what="the partition read again from its start")
    with connect_sync(settings.database_url) as conn:
        (stored,) = conn.execute("SELECT count(*) FROM events WHERE data ? 'user'").fetchone()
        reset = conn.execute("SELECT data -> 'payload' FROM events WHERE type = 'tracking_reset'").fetchall()
    assert stored == 10
    assert [r[0]["by"] for r in reset] == ["on-call"] and reset[0][0]["previous_offset"] == 500

    end = json.loads(run_cli("tracking", "reset", "--topic", settings.feedback_topic, "--partition", "0", "--to",
                             "end", "--json").stdout)
    assert end["offset"] == 9 and end["previous_offset"] == 9
