"""Consumer lag: what the broker holds that the store has not read, per tracking row and per topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka.errors import KafkaError

from flywheel.topics import TopicIds, log_ends


def next_offsets(rows: list[dict[str, Any]], current_id: str | None, partitions: int) -> dict[int, int]:
    """Per partition, the next offset the store would read of the topic as it is now: a row written from a topic
    that has since been created again (another id) counts for nothing."""
    out = dict.fromkeys(range(partitions), 0)
    for r in rows:
        same = current_id is None or r.get("topic_id") in (None, current_id)
        out[r["partition"]] = r["offset"] + 1 if same else 0
    return out


def unread(bootstrap: str, topic: str, partitions: int, rows: list[dict[str, Any]]) -> dict[int, int]:
    """Messages on the broker past each partition's tracked offset (`rows`: the consumer group's tracking rows of
    `topic`). On a log with gaps (transaction markers, compaction) this counts offsets, an upper bound."""
    ids = TopicIds(bootstrap)
    try:
        current = ids([topic]).get(topic)
    finally:
        ids.close()
    nexts = next_offsets(rows, current, partitions)
    ends = log_ends(bootstrap, topic, nexts)
    return {p: max(0, ends[p] - nexts[p]) for p in sorted(nexts)}


def with_lag(bootstrap: str, consumers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds end_offset and lag to each tracking row; None where the broker gives no usable figure."""
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for c in consumers:
        by_topic.setdefault(c["topic"], []).append(c)
    ends: dict[tuple[str, int], int] = {}
    stale: set[tuple[str, int]] = set()
    ids = TopicIds(bootstrap)
    try:
        current = ids(by_topic) if by_topic else {}
        for topic, rows in by_topic.items():
            nexts = next_offsets(rows, current.get(topic), 1 + max(r["partition"] for r in rows))
            ends.update({(topic, p): end for p, end in log_ends(bootstrap, topic, nexts, timeout=3).items()})
            stale |= {(topic, r["partition"]) for r in rows
                      if current.get(topic) and r.get("topic_id") not in (None, current.get(topic))}
    except (KafkaError, TimeoutError):  # lag is informative; stats still print without it
        pass
    finally:
        ids.close()
    out = []
    for c in consumers:
        end = ends.get((c["topic"], c["partition"]))
        lag = None if end is None else end if (c["topic"], c["partition"]) in stale else end - (c["offset"] + 1)
        out.append({**c, "end_offset": end, "lag": lag if lag is None or lag >= 0 else None})
    return out


def drain(left: Callable[[], int], *, seconds: float, still_reading: Callable[[], bool] = lambda: True,
          interval: float = 0.5) -> int:
    """Wait until `left()` (messages unread) is 0, at most `seconds`, while `still_reading()`; returns what is left."""
    deadline = time.monotonic() + seconds
    remaining = left()
    while remaining and time.monotonic() < deadline and still_reading():
        time.sleep(interval)
        remaining = left()
    return remaining
