"""Consumer lag from the broker's end offsets, where the broker reports them."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError


def with_lag(bootstrap: str, consumers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds end_offset and lag to each tracking row; None where the broker gives no usable figure."""
    if not consumers:
        return consumers
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="flywheel-stats")
    try:
        tps = [TopicPartition(c["topic"], c["partition"]) for c in consumers]
        ends = consumer.end_offsets(tps)
    except KafkaError:  # lag is informative; stats still print without it
        ends = {}
    finally:
        consumer.close()
    out = []
    for c, tp in zip(consumers, tps, strict=True):
        end = ends.get(tp)
        lag = end - (c["offset"] + 1) if end is not None else None
        out.append({**c, "end_offset": end, "lag": lag if lag is None or lag >= 0 else None})
    return out
