"""Producer benchmark: FeedbackClient (what apps embed) against a raw librdkafka producer sending the same bytes.

    python bench/client.py [--events 50000]

Starts its own embedded stack (or uses FLYWHEEL_KAFKA_BOOTSTRAP) and, in the same run, each to a topic of its own:
  raw librdkafka   confluent-kafka's Producer, the events already serialised: produce + flush
  client           FeedbackClient.send(event) for every event (validation and serialisation included) until
                   flush() reports all delivered, with each sender: kafka-python (the default) and librdkafka
Every rate is events/s from the first send to the broker's last acknowledgement. Target: >= 20k events/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack  # noqa: E402
from flywheel.client import FeedbackClient  # noqa: E402
from flywheel.domain.wire import to_wire  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


def topic(bootstrap: str, base: Settings) -> str:
    name = f"bench-client-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, base.model_copy(update={"feedback_topic": name}))
    return name


def raw_librdkafka(bootstrap: str, name: str, messages: list[tuple[bytes, bytes]]) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "enable.idempotence": False})
    started = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(name, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    if producer.flush(120):
        raise SystemExit("raw librdkafka: messages left undelivered")
    return len(messages) / (time.perf_counter() - started)


def client(bootstrap: str, name: str, events: list[object], sender: str) -> tuple[float, int]:
    """(events/s until every event is acknowledged, how many of them went through the spill file: sent faster
    than delivered, they overflow its buffer)."""
    with tempfile.TemporaryDirectory() as spill:
        c = FeedbackClient(bootstrap, topic=name, sender=sender, spill_dir=spill)
        started = time.perf_counter()
        for e in events:
            c.send(e)  # type: ignore[arg-type]
        done = c.flush(300)
        took = time.perf_counter() - started
        c.close(10)
    if done.delivered != len(events) or done.dropped:
        raise SystemExit(f"client ({sender}): {done}")
    return len(events) / took, done.spilled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    events = [s.event for s in generate(args.events, seed=args.seed, bad_fraction=0.0) if s.event is not None]
    messages = [(e.interaction_id.encode(), orjson.dumps(to_wire(e))) for e in events]
    size = sum(len(v) for _, v in messages) / len(messages)
    base = Settings()
    with bench_stack(base, "flywheel-bench-client-") as (_, bootstrap):
        raw = raw_librdkafka(bootstrap, topic(bootstrap, base), messages)
        print(f"raw librdkafka producer        {raw:>10,.0f} events/s   "
              f"({len(messages)} events, {size:.0f} bytes each)",
              flush=True)
        for sender in ("kafka-python", "librdkafka"):
            rate, spilled = client(bootstrap, topic(bootstrap, base), events, sender)
            print(f"FeedbackClient ({sender:<12})  {rate:>10,.0f} events/s   ratio to raw {rate / raw:.2f}"
                  f"   (target >= 20,000/s; {spilled} through the spill file)", flush=True)


if __name__ == "__main__":
    main()
