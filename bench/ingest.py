"""Ingest benchmark: the pipeline's end-to-end rate against a raw drain and a raw COPY of the same data.

    python bench/ingest.py [--events 50000] [--workers 1 2]

Starts its own embedded stack (or uses FLYWHEEL_DATABASE_URL / FLYWHEEL_KAFKA_BOOTSTRAP), produces
realistic traffic once, then measures in the same run:
  raw drain    aiokafka (the client the Faust worker itself consumes with) draining the topic in one consumer,
               the median of three drains
  raw COPY     one psycopg COPY of the very rows the pipeline stored, into a table shaped like the log
  pipeline     `flywheel worker` process(es) in one consumer group, for each --workers count (each in a
               database and consumer group of its own): decode, validate, redact, append, project, track
               offsets, and derive signals (done when the signals projector has the last event; "stored" is
               the rate up to the last event in the log, for comparison)
All rates are steady-state: from the first record seen to the last, so group joins are not counted.
Target: pipeline (2 workers, signals) >= 0.5 x min(raw drain, raw COPY).
Then the store alone with personal fields sealed and in the clear, in turns (bench/ingest_crypto.py; target:
sealed >= 0.9 x clear).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from bench.ingest_crypto import compare, report  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


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


def raw_drain(bootstrap: str, topic: str, expected: int) -> float:
    """Events/s of one aiokafka consumer reading the whole topic (values touched, as a real consumer would)."""
    from aiokafka import AIOKafkaConsumer

    async def drain() -> float:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            seen, first_at, first_n = 0, 0.0, 0
            deadline = time.monotonic() + 600
            while seen < expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                got = sum(len(records) for records in batches.values())
                for records in batches.values():
                    for r in records:
                        _ = r.value
                if got and not first_at:
                    first_at, first_n = time.perf_counter(), got
                seen += got
            if seen < expected:
                raise SystemExit(f"raw drain saw only {seen}/{expected}")
            return (seen - first_n) / (time.perf_counter() - first_at)
        finally:
            await consumer.stop()

    return asyncio.run(drain())


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
        procs = [subprocess.Popen([sys.executable, "-m", "flywheel", "worker", "--loglevel", "warn"], env=env,
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
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--crypto-repeat", type=int, default=4,
                    help="turns of the store sealed and in the clear (bench/ingest_crypto.py); 0: skip them")
    args = ap.parse_args()

    base = Settings()
    with bench_stack(base, "flywheel-bench-") as (server_url, bootstrap):
        tag = uuid.uuid4().hex[:8]
        topics = base.model_copy(update={"kafka_bootstrap": bootstrap, "feedback_topic": f"bench-feedback-{tag}",
                                         "deadletter_topic": f"bench-deadletter-{tag}",
                                         "rounds_topic": f"bench-rounds-{tag}", "metrics_port": 0})
        ensure_topics(bootstrap, topics)
        print(f"producing {args.events} events …", flush=True)
        n = produce(bootstrap, topics.feedback_topic, args.events, args.seed)
        # This machine's rates swing from one drain to the next: the median of three.
        drains = [raw_drain(bootstrap, topics.feedback_topic, n) for _ in range(3)]
        drain_rate = statistics.median(drains)
        print(f"raw drain (aiokafka)          {drain_rate:>10,.0f} events/s   (median of "
              f"{', '.join(f'{d:,.0f}' for d in drains)})", flush=True)
        for workers in args.workers:
            with fresh_database(server_url, f"bench_ingest_{tag}_{workers}") as db_url:
                settings = topics.model_copy(update={"database_url": db_url,
                                                     "consumer_group": f"bench-ingest-{tag}-{workers}"})
                stored_rate, pipe_rate = pipeline(settings, n, workers)
                copy_rate = raw_copy(db_url)
            label = f"{workers} worker{'s' if workers > 1 else ''}"
            print(f"  stored ({label})           {stored_rate:>10,.0f} events/s", flush=True)
            print(f"pipeline ({label}, signals)  {pipe_rate:>10,.0f} events/s", flush=True)
            print(f"raw COPY (psycopg)            {copy_rate:>10,.0f} events/s")
            ratio = pipe_rate / min(drain_rate, copy_rate)
            print(f"ratio pipeline / min(raw drain, raw COPY), {label}: {ratio:.2f}"
                  + ("   (target >= 0.5)" if workers == 2 else ""), flush=True)
        if args.crypto_repeat:
            # Sealing is the store's work: the store alone, sealed and in the clear, the same events in turns.
            print("store sealed and in the clear …", flush=True)
            clear, sealed = compare(server_url, args.events, repeat=args.crypto_repeat,
                                    say=lambda line: print(line, flush=True))
            report(args.events, args.crypto_repeat, clear, sealed)


if __name__ == "__main__":
    main()
