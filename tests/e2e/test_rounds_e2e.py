"""Simulated traffic → worker → round 1 → more traffic → round 2 → rollback with a quarantine slice → round 3
without the slice; and a build killed mid-way leaves no round behind. All through the `flywheel` CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from flywheel.settings import Settings
from store.db import connect_sync
from tests.conftest import settings_env, wait_until

pytestmark = pytest.mark.e2e


def rows(round_path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(Path(round_path).glob("*/*.jsonl")) for line in f.read_text().splitlines()]


def stored(settings: Settings, expected: int, *, at_least: bool = False) -> Callable[[], bool]:
    def check() -> bool:
        with connect_sync(settings.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM events WHERE data ? 'user'").fetchone()
        check.last = row  # type: ignore[attr-defined]
        return row is not None and (row[0] >= expected if at_least else row == (expected,))

    return check


def test_rounds_rollback_with_quarantine_then_a_clean_round(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[[], subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    start_worker()
    # Event time: the second day of traffic comes after the first (the grace period runs in event time).
    first = json.loads(run_cli("simulate", "--events", "3000", "--seed", "31", "--bad-fraction", "0",
                               "--start", "2026-11-01T08:00:00+00:00", "--json").stdout)
    wait_until(stored(settings, first["valid"]["total"]), timeout=180, what="first traffic stored")

    # A benchmark item that leaked into production traffic, reformatted: no round may contain it.
    with connect_sync(settings.database_url) as conn:
        prompt, answer = conn.execute(
            "SELECT messages -> -1 ->> 'content', response FROM interactions i WHERE consent_training AND EXISTS"
            " (SELECT 1 FROM feedback f WHERE f.interaction_id = i.interaction_id AND f.type = 'edit')"
            " ORDER BY position LIMIT 1").fetchone()
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": "  " + prompt.upper(), "answer": answer}) + "\n")
    assert "1 items added" in run_cli("quarantine", "add", str(bench), "--name", "leaked-bench").stdout

    r1 = json.loads(run_cli("rounds", "build", "--json").stdout)
    assert r1["round"] == 1 and r1["rows_out"] > 0 and r1["state"] == "promoted"
    manifest = json.loads((Path(r1["path"]) / "manifest.json").read_text())
    assert manifest["evaluation_isolation"]["hits"]
    assert not any(answer in json.dumps(r) for r in rows(r1["path"]))

    second = json.loads(run_cli("simulate", "--events", "2000", "--seed", "32", "--bad-fraction", "0",
                                "--start", "2026-11-02T08:00:00+00:00", "--json").stdout)
    wait_until(stored(settings, first["valid"]["total"] + second["valid"]["total"]), timeout=180,
               what="second traffic stored")
    r2 = json.loads(run_cli("rounds", "build", "--json").stdout)
    assert r2["round"] == 2 and r2["watermark"] > r1["watermark"] and r2["state"] == "promoted"
    culprit = "support-bot"
    assert any(r["lineage"]["app_id"] == culprit for r in rows(r2["path"]))

    started = time.perf_counter()
    out = run_cli("rounds", "rollback", "2", "--reason", "support-bot labels were wrong",
                  "--quarantine", f"app_id={culprit}").stdout
    assert "current round: 1" in out and time.perf_counter() - started < 30
    assert run_cli("rounds", "current").stdout.strip() == r1["path"]
    assert (Path(r2["path"]) / "ROLLED_BACK").exists()
    assert "already" in run_cli("rounds", "rollback", "2", "--reason", "again").stdout

    r3 = json.loads(run_cli("rounds", "build", "--json").stdout)
    assert r3["round"] == 3 and r3["sliced_out"] > 0
    assert rows(r3["path"]) and not any(r["lineage"]["app_id"] == culprit for r in rows(r3["path"]))
    listed = {r["number"]: r for r in json.loads(run_cli("rounds", "list", "--json").stdout)["rounds"]}
    assert listed[2]["rolled_back"] and not listed[3]["rolled_back"] and listed[3]["parent"] == 1
    diff = run_cli("rounds", "diff", "1", "3").stdout
    assert "rows_out" in diff and "splits.train" in diff
    assert "recorded" in run_cli("rounds", "consume", "3", "--run", "run-42", "--model-version", "m-9",
                                 "--stage", "dpo").stdout

    consumer = KafkaConsumer(settings.rounds_topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    announced = [json.loads(m.value)["type"] for m in consumer]
    consumer.close()
    assert announced == ["round_published", "round_published", "round_rolled_back", "round_published"]

    # kill -9 a build while it writes: no round appears, and the next build cleans up and succeeds
    root = settings.rounds_root
    build = subprocess.Popen([sys.executable, "-m", "flywheel", "rounds", "build"], env=settings_env(settings),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(root.glob(".building-*/*/*.jsonl")) and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.005)
    assert build.poll() is None, "the build finished before it could be killed"
    build.send_signal(signal.SIGKILL)
    build.wait(10)
    assert [r["number"] for r in json.loads(run_cli("rounds", "list", "--json").stdout)["rounds"]] == [1, 2, 3]
    assert not (root / "round-0004").exists() and run_cli("rounds", "current").stdout.strip() == r3["path"]
    r4 = json.loads(run_cli("rounds", "build", "--watermark", str(r3["watermark"]), "--json").stdout)
    assert r4["round"] == 4 and not list(root.glob(".building-*"))
    assert r4["content_hash"] == r3["content_hash"]  # same log prefix, config and quarantine: the same round


def test_a_round_builds_while_traffic_flows_and_recuts_to_the_same_hash(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[[], subprocess.Popen[bytes]],
) -> None:
    start_worker()
    # Event time: the second traffic comes after the first (the grace period runs in event time).
    first = json.loads(run_cli("simulate", "--events", "2000", "--seed", "5", "--bad-fraction", "0",
                               "--start", "2026-11-02T08:00:00+00:00", "--json").stdout)
    wait_until(stored(settings, first["valid"]["total"]), timeout=180, what="first traffic stored")
    traffic = subprocess.Popen([sys.executable, "-m", "flywheel", "simulate", "--events", "30000", "--seed", "6",
                                "--bad-fraction", "0", "--start", "2026-11-03T08:00:00+00:00", "--json"],
                               env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(stored(settings, first["valid"]["total"] + 1000, at_least=True), timeout=120,
                   what="the second traffic flowing")
        built = json.loads(run_cli("rounds", "build", "--json").stdout)
        with connect_sync(settings.database_url) as conn:
            (published_at,) = conn.execute("SELECT position FROM events WHERE type = 'round_published'").fetchone()
            (during,) = conn.execute("SELECT count(*) FROM events WHERE position > %s AND position < %s",
                                     [built["watermark"], published_at]).fetchone()
    finally:
        out, err = traffic.communicate(timeout=300)
    assert traffic.returncode == 0, err
    assert built["round"] == 1 and built["rows_out"] > 0
    assert during > 0, "no event was appended while the build ran"
    second = json.loads(out)
    wait_until(stored(settings, first["valid"]["total"] + second["valid"]["total"]), timeout=300,
               what="all traffic stored")
    again = json.loads(run_cli("rounds", "build", "--watermark", str(built["watermark"]), "--json").stdout)
    assert again["content_hash"] == built["content_hash"]
    check = run_cli("replay", "--check").stdout
    assert "interactions   ok" in check and "signals        ok" in check
