"""Consumer lag: what the broker holds that the store has not read, per tracking row and per topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka.errors import KafkaError

from flywheel.domain.tracking import next_offset
from flywheel.settings import PLAINTEXT, KafkaSecurity
from streams.topics import TopicIds, admin_client, log_ends, topic_id


def next_offsets(rows: list[dict[str, Any]], current_id: str | None, partitions: int) -> dict[int, int]:
    """Per partition, the next offset the store would read of the topic as it is now (`rows`: one consumer group's
    tracking rows of the topic; flywheel.domain.tracking.next_offset)."""
    out = dict.fromkeys(range(partitions), 0)
    for r in rows:
        out[r["partition"]] = next_offset(r["offset"], r.get("topic_id"), current_id)
    return out


def unread(bootstrap: str, topic: str, partitions: int, rows: list[dict[str, Any]],
           security: KafkaSecurity = PLAINTEXT) -> dict[int, int]:
    """Messages on the broker past each partition's tracked offset (`rows`: the consumer group's tracking rows of
    `topic`). On a log with gaps (transaction markers, compaction) this counts offsets, an upper bound."""
    nexts = next_offsets(rows, topic_id(bootstrap, topic, security), partitions)
    ends = log_ends(bootstrap, topic, nexts, security=security)
    return {p: max(0, ends[p] - nexts[p]) for p in sorted(nexts)}


def with_lag(bootstrap: str, consumers: list[dict[str, Any]], security: KafkaSecurity = PLAINTEXT,
             ) -> list[dict[str, Any]]:
    """Adds end_offset and lag to each tracking row; None where the broker gives no usable figure."""
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for c in consumers:
        by_topic.setdefault(c["topic"], []).append(c)
    ends: dict[tuple[str, int], int] = {}
    current: dict[str, str] = {}
    ids = TopicIds(bootstrap, security)
    try:
        current = ids(by_topic) if by_topic else {}
        for topic, rows in by_topic.items():
            # Any group's offset will do as the place to fetch from: the log end comes with every fetch response.
            near = {r["partition"]: max(0, r["offset"]) for r in rows}
            found = log_ends(bootstrap, topic, near, timeout=3, security=security)
            ends.update({(topic, p): end for p, end in found.items()})
    except (KafkaError, TimeoutError):  # lag is informative; stats still print without it
        pass
    finally:
        ids.close()
    out = []
    for c in consumers:
        end = ends.get((c["topic"], c["partition"]))
        lag = None if end is None else end - next_offset(c["offset"], c.get("topic_id"), current.get(c["topic"]))
        out.append({**c, "end_offset": end, "lag": lag if lag is None or lag >= 0 else None})
    return out


def drain(left: Callable[[], int], *, seconds: float, still_reading: Callable[[], bool] = lambda: True,
          patience: float | None = None, interval: float = 0.5) -> int:
    """Wait until `left()` (messages unread) is 0, at most `seconds`, while `still_reading()` and, with `patience`,
    while the count fell within the last `patience` seconds (some worker still reads); returns what is left."""
    deadline = time.monotonic() + seconds
    remaining, moved = left(), time.monotonic()
    while remaining and time.monotonic() < deadline and still_reading():
        if patience is not None and time.monotonic() - moved >= patience:
            break
        time.sleep(interval)
        now = left()
        if now != remaining:
            remaining, moved = now, time.monotonic()
    return remaining


def committed_unread(bootstrap: str, group: str, topic: str, partitions: int,
                     security: KafkaSecurity = PLAINTEXT) -> dict[int, int]:
    """Messages on the broker past each partition's offset committed in Kafka by `group` (a Faust worker's group
    whose offsets are Kafka's, not the store's: the generation workers'). A partition the group never committed
    counts from 0, an upper bound where retention has removed the log's start."""
    admin = admin_client(bootstrap, security, client_id="flywheel-lag", timeout=10)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    nexts = dict.fromkeys(range(partitions), 0)
    nexts.update({tp.partition: max(0, meta.offset) for tp, meta in offsets.items()
                  if tp.topic == topic and tp.partition in nexts})
    ends = log_ends(bootstrap, topic, nexts, security=security)
    return {p: max(0, ends[p] - nexts[p]) for p in sorted(nexts)}
