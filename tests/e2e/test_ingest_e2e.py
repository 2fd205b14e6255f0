"""The whole ingest loop through real processes: `flywheel simulate` → broker → `flywheel worker` →
Postgres, including a kill -9 of the worker mid-stream."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer

from flywheel.settings import Settings
from store.db import connect_sync
from store.stats import store_stats
from tests.conftest import settings_env, wait_until

pytestmark = pytest.mark.e2e


def stats(settings: Settings) -> dict[str, Any]:
    with connect_sync(settings.database_url) as conn:
        return store_stats(conn)


def reconciled(settings: Settings, summary: dict[str, Any]) -> Callable[[], bool]:
    def check() -> bool:
        s = stats(settings)
        check.last = s  # type: ignore[attr-defined]  # shown when the wait times out
        return (
            s["events"]["by_type"] == summary["valid"]["by_type"]
            and s["dead_lettered"]["by_reason"] == summary["bad"]["by_reason"]
            and s["parked"] == 0
        )

    return check


def dead_letter_topic(settings: Settings, expected: int) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(settings.deadletter_topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    out: list[dict[str, Any]] = []
    for _ in range(20):
        out += [orjson.loads(r.value) for r in consumer]
        if len(out) >= expected:
            break
    consumer.close()
    return out


def test_produced_equals_stored_plus_dead_lettered(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[[], subprocess.Popen[bytes]],
) -> None:
    start_worker()
    summary = json.loads(run_cli("simulate", "--events", "3000", "--seed", "11", "--bad-fraction", "0.1",
                                 "--json").stdout)
    assert summary["produced"] == 3000 and summary["bad"]["total"] >= 250
    assert set(summary["bad"]["by_reason"]) >= {"bad_json", "bad_encoding", "unknown_type", "missing_field",
                                                "unknown_interaction"}

    wait_until(reconciled(settings, summary), timeout=180, what="stored + dead-lettered == produced")

    s = stats(settings)
    assert s["events"]["total"] + s["dead_lettered"]["total"] == summary["produced"]
    letters = dead_letter_topic(settings, s["dead_lettered"]["total"])
    assert Counter(d["reason"] for d in letters) == Counter(summary["bad"]["by_reason"])
    assert all(base64.b64decode(d["original_b64"]) for d in letters)

    check = run_cli("replay", "--check")
    assert "interactions   ok" in check.stdout and "feedback       ok" in check.stdout
    human = run_cli("stats").stdout
    assert f"events stored      {s['events']['total']:>9}" in human


def test_kill_9_mid_stream_still_stores_every_event_exactly_once(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[[], subprocess.Popen[bytes]],
) -> None:
    events = 20000
    producer = subprocess.Popen(
        [sys.executable, "-m", "flywheel", "simulate", "--events", str(events), "--seed", "5",
         "--bad-fraction", "0.02", "--json"],
        env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    worker = start_worker()
    wait_until(lambda: stats(settings)["events"]["total"] > 2000, timeout=180, what="the worker to get going")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    at_kill = stats(settings)["events"]["total"]

    out, _ = producer.communicate(timeout=300)
    summary = json.loads(out)
    assert at_kill < summary["valid"]["total"], "the kill came too late to test anything"

    start_worker()
    wait_until(reconciled(settings, summary), timeout=300, what="exactly-once after kill -9")
    with connect_sync(settings.database_url) as conn:
        distinct = conn.execute("SELECT count(DISTINCT event_id), count(*), max(position) FROM events").fetchone()
    assert distinct == (summary["valid"]["total"],) * 3  # no duplicates, no gaps in positions
    assert run_cli("replay", "--check").returncode == 0


def test_a_message_without_a_value_is_dead_lettered_not_a_crash(
    settings: Settings, start_worker: Callable[[], subprocess.Popen[bytes]],
) -> None:
    from kafka import KafkaProducer

    worker = start_worker()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    producer.send(settings.feedback_topic, key=b"i-tombstone", value=None)
    producer.flush()
    producer.close()
    wait_until(lambda: stats(settings)["dead_lettered"]["by_reason"] == {"bad_json": 1}, timeout=120,
               what="the tombstone dead-lettered")
    [letter] = dead_letter_topic(settings, 1)
    assert (letter["reason"], letter["original_b64"], base64.b64decode(letter["key_b64"])) == \
        ("bad_json", "", b"i-tombstone")
    assert worker.poll() is None  # still running
