"""Ingest benchmark: the pipeline's end-to-end rate against raw consume and raw COPY of the same data.

    python bench/ingest.py [--events 50000] [--workers 2]

Starts its own embedded stack (or uses FLYWHEEL_DATABASE_URL / FLYWHEEL_KAFKA_BOOTSTRAP), produces
realistic traffic once, then measures in the same run:
  raw consume  plain kafka-python consumer draining the topic (the median of three drains)
  raw COPY     one psycopg COPY of the very rows the pipeline stored, into a table shaped like the log
  pipeline     `flywheel worker` process(es): decode, validate, redact, append, project, track offsets,
               and derive signals (the pipeline is done when the signals projector has the last event;
               "stored" is the rate up to the last event in the log, for comparison)
All rates are steady-state: from the first record seen to the last, so group joins are not counted.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from kafka import KafkaConsumer, KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulate import generate  # noqa: E402
from flywheel.topics import ensure_topics  # noqa: E402


def produce(bootstrap: str, topic: str, events: int, seed: int) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024,
                             enable_idempotence=False, acks="all")
    n = 0
    for sim in generate(events, seed=seed, bad_fraction=0.0):
        producer.send(topic, key=sim.key, value=sim.value)
        n += 1
    producer.flush()
    producer.close()
    return n


def raw_consume(bootstrap: str, topic: str, expected: int) -> float:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_records=2000)
    seen, first_at, first_n = 0, 0.0, 0
    deadline = time.monotonic() + 600
    while seen < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                _ = r.value  # touch it, as a real consumer would
            if not first_at:
                first_at, first_n = time.perf_counter(), len(records)
            seen += len(records)
    took = time.perf_counter() - first_at
    consumer.close()
    if seen < expected:
        raise SystemExit(f"raw consumer saw only {seen}/{expected}")
    return (seen - first_n) / took


def stored(conn: psycopg.Connection) -> int:
    """Events in the log. Positions are gap-free (store.eventstore.append), so the newest is the count: an
    index lookup, where count(*) would scan the table the pipeline is writing, twenty times a second."""
    row = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
    return int(row[0]) if row else 0


def signals_done(conn: psycopg.Connection) -> int:
    """Events the signals projector has applied (its checkpoint, a count for the same reason)."""
    row = conn.execute("SELECT position FROM checkpoints WHERE name = 'signals'").fetchone()
    return int(row[0]) if row else 0


def pipeline(settings: Settings, produced: int, workers: int) -> tuple[float, float]:
    """(events/s up to the last of `produced` new events stored, events/s up to its signals derived). Progress is
    watched on one connection (a new one per look would start a Postgres backend twenty times a second)."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        expected = stored(conn) + produced
        env = settings.child_env()
        procs = [subprocess.Popen([sys.executable, "-m", "flywheel.cli", "worker", "--loglevel", "warn"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
        try:
            first_at, first_n, stored_at = 0.0, 0, 0.0
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in procs):
                    raise SystemExit(f"a worker exited with code {[p.poll() for p in procs]}")
                n = stored(conn)
                if dead := conn.execute("SELECT reason, detail FROM dead_letters LIMIT 1").fetchone():
                    raise SystemExit(f"a valid event was dead-lettered: {dead[0]}: {dead[1]}")
                if n and not first_at:
                    first_at, first_n = time.perf_counter(), n
                if n >= expected and not stored_at:
                    stored_at = time.perf_counter()
                if n >= expected and signals_done(conn) >= expected:
                    return (n - first_n) / (stored_at - first_at), (n - first_n) / (time.perf_counter() - first_at)
                time.sleep(0.05)
            raise SystemExit(f"pipeline stored only {stored(conn)}/{expected}")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)


def raw_copy(url: str) -> float:
    with psycopg.connect(url) as conn:
        buf = io.BytesIO()
        with conn.cursor().copy(
            "COPY (SELECT position, event_id, type, interaction_id, app_id, occurred_at, data FROM events"
            " ORDER BY position) TO STDOUT"
        ) as copy:
            for block in copy:
                buf.write(block)
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (LIKE events INCLUDING ALL)")
        conn.commit()
        rows = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]
        data = buf.getvalue()
        started = time.perf_counter()
        with conn.cursor().copy(
            "COPY bench_copy (position, event_id, type, interaction_id, app_id, occurred_at, data) FROM STDIN"
        ) as copy:
            copy.write(data)
        conn.commit()
        took = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return rows / took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    # As the pipeline scales out: a worker per core in one consumer group (the raw baseline stays one consumer).
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    base = Settings()
    with bench_stack(base, "flywheel-bench-") as (server_url, bootstrap):
        tag = uuid.uuid4().hex[:8]
        with fresh_database(server_url, f"bench_ingest_{tag}") as db_url:
            settings = base.model_copy(update={
                "database_url": db_url, "kafka_bootstrap": bootstrap, "feedback_topic": f"bench-feedback-{tag}",
                "deadletter_topic": f"bench-deadletter-{tag}", "rounds_topic": f"bench-rounds-{tag}",
                "consumer_group": f"bench-ingest-{tag}", "metrics_port": 0,
            })
            ensure_topics(bootstrap, settings)
            print(f"producing {args.events} events …", flush=True)
            n = produce(bootstrap, settings.feedback_topic, args.events, args.seed)
            # This machine's consume rate swings by a third from one drain to the next: the median of three.
            drains = sorted(raw_consume(bootstrap, settings.feedback_topic, n) for _ in range(3))
            consume_rate = drains[1]
            print(f"raw consume (kafka-python)   {consume_rate:>10,.0f} events/s   (median of "
                  f"{', '.join(f'{d:,.0f}' for d in drains)})", flush=True)
            stored_rate, pipe_rate = pipeline(settings, n, args.workers)
            workers = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
            print(f"  stored ({workers})          {stored_rate:>10,.0f} events/s", flush=True)
            print(f"pipeline ({workers}, signals) {pipe_rate:>10,.0f} events/s", flush=True)
            copy_rate = raw_copy(db_url)
            print(f"raw COPY (psycopg)           {copy_rate:>10,.0f} events/s")
            ratio = pipe_rate / min(consume_rate, copy_rate)
            print(f"ratio pipeline / min(raw)    {ratio:>10.2f}   (target >= 0.5)")


if __name__ == "__main__":
    main()
