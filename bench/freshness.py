"""Freshness benchmark: how long after it is produced an event is stored, and its signals derived.

    python bench/freshness.py [--workers 2] [--seconds 30] [--rate R]

Starts its own embedded stack (or uses FLYWHEEL_DATABASE_URL / FLYWHEEL_KAFKA_BOOTSTRAP) and `--workers` workers in
one consumer group. Without --rate it first measures the pipeline's maximum rate (a backlog of --calibrate events
drained, signals included, as bench/ingest.py does) and then sends at half of it: a librdkafka producer paces
realistic traffic for --seconds while a watcher polls the log's head and the signals checkpoint every 10 ms. An
event counts as stored when the head reaches its position, as derived when the checkpoint does; its latency is that
moment minus the moment it was handed to the producer (the producer's batching is part of it).
Targets: p99 produce -> stored < 1 s; p99 produce -> signals derived < 2 s.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from bench.ingest import pipeline, produce  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


class Watcher(threading.Thread):
    """Polls (time, head, signals checkpoint) every `interval` seconds on one connection."""

    def __init__(self, url: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.seen: list[tuple[float, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute("SELECT (SELECT coalesce(max(position), 0) FROM events),"
                                   " (SELECT coalesce(max(position), 0) FROM checkpoints WHERE name = 'signals')"
                                   ).fetchone()
                assert row is not None
                self.seen.append((time.time(), int(row[0]), int(row[1])))
                time.sleep(self.interval)

    def first_time(self, column: int, position: int) -> float | None:
        """When the polled value in `column` (1: head, 2: checkpoint) first reached `position`."""
        values = [s[column] for s in self.seen]
        i = bisect.bisect_left(values, position)
        return self.seen[i][0] if i < len(self.seen) else None


def paced(bootstrap: str, topic: str, rate: float, seconds: float, seed: int) -> dict[str, float]:
    """Send realistic traffic at `rate` events/s for `seconds`; returns event id -> when it was handed over."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "enable.idempotence": False})
    sent: dict[str, float] = {}
    started = time.time()
    for n, sim in enumerate(generate(int(rate * seconds), seed=seed, bad_fraction=0.0)):
        due = started + n / rate
        if (wait := due - time.time()) > 0:
            time.sleep(wait)
        sent[orjson.loads(sim.value)["event_id"]] = time.time()
        producer.produce(topic, key=sim.key, value=sim.value)
        producer.poll(0)
    producer.flush(60)
    return sent


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rate", type=float, default=0, help="events/s (default: half the measured maximum)")
    ap.add_argument("--calibrate", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    base = Settings()
    with bench_stack(base, "flywheel-bench-fresh-") as (server_url, bootstrap):
        tag = uuid.uuid4().hex[:8]
        rate = args.rate
        if not rate:
            with fresh_database(server_url, f"bench_fresh_cal_{tag}") as url:
                cal = base.model_copy(update={
                    "database_url": url, "kafka_bootstrap": bootstrap, "feedback_topic": f"bench-cal-{tag}",
                    "deadletter_topic": f"bench-cal-dl-{tag}", "consumer_group": f"bench-cal-{tag}"})
                ensure_topics(bootstrap, cal)
                n = produce(bootstrap, cal.feedback_topic, args.calibrate, args.seed + 1)
                _, maximum = pipeline(cal, n, args.workers)
            rate = maximum / 2
            print(f"maximum ({args.workers} workers, signals)  {maximum:>8,.0f} events/s; sending at half: "
                  f"{rate:,.0f} events/s", flush=True)
        with fresh_database(server_url, f"bench_fresh_{tag}") as url:
            settings = base.model_copy(update={
                "database_url": url, "kafka_bootstrap": bootstrap, "feedback_topic": f"bench-fresh-{tag}",
                "deadletter_topic": f"bench-fresh-dl-{tag}", "consumer_group": f"bench-fresh-{tag}"})
            ensure_topics(bootstrap, settings)
            workers = [subprocess.Popen([sys.executable, "-m", "flywheel", "worker", "--loglevel", "warn"],
                                        env=settings.child_env(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) for _ in range(args.workers)]
            watcher = Watcher(url)
            try:
                time.sleep(8)  # the group joins before the clock starts
                watcher.start()
                sent = paced(bootstrap, settings.feedback_topic, rate, args.seconds, args.seed)
                with psycopg.connect(url, autocommit=True) as conn:
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        row = conn.execute("SELECT count(*) FROM events WHERE data ? 'user'").fetchone()
                        done = conn.execute("SELECT position FROM checkpoints WHERE name = 'signals'").fetchone()
                        head = conn.execute("SELECT max(position) FROM events").fetchone()
                        if row and row[0] >= len(sent) and done and head and done[0] >= head[0]:
                            break
                        time.sleep(0.2)
                    time.sleep(0.1)
                    watcher.stop.set()
                    watcher.join()
                    positions = dict(conn.execute("SELECT event_id::text, position FROM events WHERE data ? 'user'"
                                                  ).fetchall())
            finally:
                for w in workers:
                    w.terminate()
                for w in workers:
                    w.wait(30)
        stored, derived, missing = [], [], 0
        for event_id, at in sent.items():
            position = positions.get(event_id)
            s = None if position is None else watcher.first_time(1, position)
            d = None if position is None else watcher.first_time(2, position)
            if s is None or d is None:
                missing += 1
                continue
            stored.append(s - at)
            derived.append(d - at)
        print(f"sent {len(sent)} events at {rate:,.0f}/s for {args.seconds:g} s with {args.workers} workers "
              f"({missing} not seen)", flush=True)
        for name, values, target in (("produce -> stored", stored, 1.0), ("produce -> signals derived", derived, 2.0)):
            print(f"{name:<28} p50 {statistics.median(values) * 1000:7.0f} ms   p99 "
                  f"{percentile(values, 99) * 1000:7.0f} ms   max {max(values) * 1000:7.0f} ms   "
                  f"(target p99 < {target:g} s)")


if __name__ == "__main__":
    main()
